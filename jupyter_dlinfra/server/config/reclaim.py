"""Options of idle reclaim (see core/idle.py); the policy API can replace them at run time."""

from __future__ import annotations

from typing import Any

from traitlets import Dict, Enum, Float, HasTraits, Int, List, TraitError, Unicode, validate

from jupyter_dlinfra.core.idle import PolicyError, ReclaimPolicy
from jupyter_dlinfra.server.config.lists import read_list_literal

__all__ = ["ReclaimOptions"]


class ReclaimOptions(HasTraits):
    idle_util_percent = Float(
        5.0,
        config=True,
        help="A GPU under this utilisation (%) is idle; a kernel is idle when all its GPUs are. "
        "Only GPU utilisation counts: CPU work or kernel messages do not make a kernel active. "
        "0 disables idle detection, warnings and reclaim.",
    )
    idle_after = Float(
        600.0,
        config=True,
        help="Seconds a kernel's GPUs must stay idle before the kernel shows as idle (sidebar, "
        "API). 0 disables idle detection, warnings and reclaim.",
    )
    warn_after = Float(
        1800.0,
        config=True,
        help="Seconds of idleness before the kernel's user is warned: in the notebook, as a "
        "JupyterLab notification with a Keep button, and in the event stream. At least "
        "idle_after. 0 disables warnings and reclaim (nothing is taken without a warning).",
    )
    reclaim_after = Float(
        3600.0,
        config=True,
        help="Seconds of idleness before the GPUs are reclaimed by reclaim_action. Later than "
        "warn_after: users always get reclaim_after - warn_after seconds of warning, even "
        "after a gap in sampling. 0 disables reclaim (warnings only).",
    )
    reclaim_action = Enum(
        ["release", "shutdown", "notify", "park"],
        "release",
        config=True,
        help="What a reclaim does: 'release' frees the GPUs and restarts the kernel without "
        "them (the notebook says why at its next execution); 'shutdown' frees them and shuts "
        "the kernel down; 'notify' takes nothing and only records what would have happened "
        "(a dry run); 'park' checkpoints the kernel's GPU memory to host memory (CUDA "
        "checkpointing), lends its GPUs to preemptible jobs and gives them back at its next "
        "cell, variables intact (a kernel that cannot be parked is released, with the reason). "
        "Freed GPUs go to the head of the queue at once.",
    )
    checkpointer = Enum(
        ["auto", "cuda", "simulated"],
        "auto",
        config=True,
        help="What parks kernels (reclaim_action 'park', %gpu park): 'cuda', the NVIDIA "
        "driver's CUDA checkpointing (driver 570 or later, the cuda-bindings package: pip "
        "install 'jupyter-dlinfra[cuda]'); 'simulated', a labelled stand-in for machines "
        "without GPUs (demos, tests; DLINFRA_SIMULATED_CHECKPOINT_FILE makes it refuse or "
        "fail); 'auto': simulated on simulated GPUs, else cuda.",
    )
    park_host_memory = Float(
        0.0,
        config=True,
        help="GiB of host memory this node keeps, all together, for parked kernels' GPU "
        "memory; a kernel that would pass it is released instead. 0: half of this machine's "
        "memory.",
    )
    park_timeout = Float(
        300.0,
        config=True,
        help="Seconds a park (lock and checkpoint) or a restore may take before it counts as "
        "failed.",
    )
    keep_extension = Float(
        3600.0,
        config=True,
        help="Seconds that one Keep (the notification's button, or %gpu keep) holds idle GPUs "
        "longer; the next warning comes reclaim_after - warn_after before the new deadline. "
        "0 disables Keep.",
    )
    max_keeps = Int(
        3,
        config=True,
        help="Keeps allowed while GPUs stay idle; the count starts again once they are used. "
        "0 disables Keep.",
    )
    policy_overrides = Dict(
        config=True,
        help="Per-user and per-group policy: {'users': {'alice': {'reclaim_after': 7200}}, "
        "'groups': {'interns': {'reclaim_after': 1800}, 'oncall': {'exempt': True}}}. Fields "
        "as the options above (seconds; 'action' for reclaim_action), plus 'exempt'. Group "
        "overrides apply in alphabetical order of the groups, then the user's own; an "
        "exemption anywhere wins.",
    )
    exempt_users = List(
        Unicode(),
        config=True,
        help="Users whose kernels are never warned or reclaimed (same as an override "
        "{'exempt': True}).",
    )
    exempt_groups = List(
        Unicode(), config=True, help="Groups whose members are never warned or reclaimed."
    )
    usage_bucket = Float(
        60.0,
        config=True,
        help="Seconds of each kernel's GPU use summed into one stored row of history, which "
        "policy dry runs (POST /dlinfra/api/policy/simulate) replay. 0 keeps no history.",
    )
    usage_retention = Float(
        7 * 86400.0,
        config=True,
        help="Seconds of usage history kept for dry runs; older rows are deleted hourly. "
        "0 keeps no history.",
    )
    report_retention = Float(
        400 * 86400.0,
        config=True,
        help="Seconds of hourly usage history kept for usage reports (GET "
        "/dlinfra/api/reports/usage, `jupyter dlinfra report`): one row per allocation per "
        "hour it held GPUs. Older rows are deleted hourly; 0 keeps none.",
    )
    coach_window = Float(
        300.0,
        config=True,
        help="Seconds of recent samples behind the utilisation hints (input-bound, batch too "
        "small, idle between cells) in the sidebar and %gpu.",
    )

    def configured_policy(self) -> ReclaimPolicy:
        """The reclaim policy of this configuration (before any change through the API)."""
        overrides = dict(self.policy_overrides)
        users = {k: dict(v) for k, v in dict(overrides.pop("users", {}) or {}).items()}
        groups = {k: dict(v) for k, v in dict(overrides.pop("groups", {}) or {}).items()}
        if overrides:
            raise TraitError(
                "DLInfra.policy_overrides takes 'users' and 'groups', not "
                + ", ".join(sorted(overrides))
            )
        for name in self.exempt_users:
            users.setdefault(name, {})["exempt"] = True
        for name in self.exempt_groups:
            groups.setdefault(name, {})["exempt"] = True
        doc = {
            "idle_util_percent": self.idle_util_percent,
            "idle_after": self.idle_after,
            "warn_after": self.warn_after,
            "reclaim_after": self.reclaim_after,
            "action": self.reclaim_action,
            "keep_extension": self.keep_extension,
            "max_keeps": self.max_keeps,
            "users": users,
            "groups": groups,
        }
        try:
            return ReclaimPolicy.from_json(doc)
        except PolicyError as err:
            field = err.field.replace("action", "reclaim_action")
            where = field if "." in field else f"DLInfra.{field}"
            raise TraitError(f"{where}: {err.message.partition(': ')[2]}") from None

    @validate("park_host_memory", "park_timeout")
    def _check_park(self, proposal: dict[str, Any]) -> float:
        value = float(proposal["value"])
        name = proposal["trait"].name
        low_ok = value >= 0 if name == "park_host_memory" else value > 0
        if not low_ok or value != value or value == float("inf"):
            need = "0 or more" if name == "park_host_memory" else "more than 0"
            raise TraitError(f"DLInfra.{name} must be a finite number, {need}, not {value:g}")
        return value

    @validate("exempt_users", "exempt_groups")
    def _read_exempt(self, proposal: dict[str, Any]) -> list[str]:
        return read_list_literal(proposal)
