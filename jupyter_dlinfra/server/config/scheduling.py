"""Options of scheduling (docs/scheduling.md); admins may change all of them through the API."""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Dict, Float, HasTraits, Int, TraitError, Unicode

from jupyter_dlinfra.core.idle import PolicyError
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy

__all__ = ["SchedulingOptions"]


class SchedulingOptions(HasTraits):
    priority_classes = Dict(
        {},
        config=True,
        help="Priority classes: name -> {'priority': int, 'preemptible': bool}. Higher priority "
        "is served first, whatever the fair share; the jobs of a preemptible class may be "
        "stopped and requeued for a higher class (kernels never are). Empty: interactive (100), "
        "batch (50, preemptible), low (10, preemptible).",
    )
    kernel_class = Unicode(
        "interactive",
        config=True,
        help="Class of a kernel's %gpu request unless it names one; must not be preemptible.",
    )
    job_class = Unicode("batch", config=True, help="Class of a job submitted without one.")
    fair_share = Bool(
        True,
        config=True,
        help="Within a class, serve users (and groups with a share) with less recent GPU use "
        "per share first. False: first come, first served.",
    )
    fair_share_half_life = Float(
        7 * 86400.0,
        config=True,
        help="Seconds after which past GPU use counts half as much for fair share (SLURM's "
        "PriorityDecayHalfLife). GPUs held now count as if held one more half-life.",
    )
    default_share = Float(1.0, config=True, help="Share of a user or group not listed below.")
    user_shares = Dict({}, config=True, help="Fair-share weight per user: name -> number > 0.")
    group_shares = Dict(
        {},
        config=True,
        help="Fair-share weight per group (an account): name -> number > 0. A user is in the "
        "account of the first of their groups (alphabetically) that has a share; groups are "
        "compared first, then users within them.",
    )
    default_user_quota = Int(
        None,
        allow_none=True,
        config=True,
        help="GPUs one user may hold at once; None: no limit. See also user_quotas.",
    )
    user_quotas = Dict({}, config=True, help="GPUs a user may hold at once: name -> count.")
    group_quotas = Dict(
        {}, config=True, help="GPUs the members of a group may hold together: name -> count."
    )
    quota_borrowing = Bool(
        True,
        config=True,
        help="Let jobs of a preemptible class go beyond their quota on GPUs nobody within "
        "quota wants; such borrowed GPUs are the first taken back (preempted) when others wait.",
    )
    preemption = Bool(
        True,
        config=True,
        help="Stop and requeue preemptible jobs of a lower class, or holding borrowed GPUs, for "
        "a waiting request. False: nothing is ever preempted.",
    )
    reservations = Int(
        16,
        config=True,
        help="How many blocked requests keep the free GPUs they could use for themselves in "
        "each pass (so that large requests are not starved by small ones). 0: pure backfill.",
    )
    starvation_limit = Float(
        86400.0,
        config=True,
        help="Seconds after which a waiting request goes ahead of fair-share order in its "
        "class; 0 switches this off.",
    )

    def configured_scheduling(self) -> SchedulingPolicy:
        """The scheduling policy of this configuration (before any change through the API)."""
        names = {
            "classes": "priority_classes",
            "half_life": "fair_share_half_life",
            "borrowing": "quota_borrowing",
        }
        doc: dict[str, Any] = {
            "kernel_class": self.kernel_class,
            "job_class": self.job_class,
            "fair_share": self.fair_share,
            "half_life": self.fair_share_half_life,
            "default_share": self.default_share,
            "user_shares": dict(self.user_shares),
            "group_shares": dict(self.group_shares),
            "default_user_quota": self.default_user_quota,
            "user_quotas": dict(self.user_quotas),
            "group_quotas": dict(self.group_quotas),
            "borrowing": self.quota_borrowing,
            "preemption": self.preemption,
            "reservations": self.reservations,
            "starvation_limit": self.starvation_limit,
        }
        if self.priority_classes:
            doc["classes"] = dict(self.priority_classes)
        try:
            return SchedulingPolicy.from_json(doc)
        except PolicyError as err:
            head, _, rest = err.field.partition(".")
            field = names.get(head, head) + (f".{rest}" if rest else "")
            raise TraitError(f"DLInfra.{field}: {err.message.partition(': ')[2]}") from None
