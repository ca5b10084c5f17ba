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
        ["release", "shutdown", "notify"],
        "release",
        config=True,
        help="What a reclaim does: 'release' frees the GPUs and restarts the kernel without "
        "them (the notebook says why at its next execution); 'shutdown' frees them and shuts "
        "the kernel down; 'notify' takes nothing and only records what would have happened "
        "(a dry run). Freed GPUs go to the head of the queue at once.",
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

    @validate("exempt_users", "exempt_groups")
    def _read_exempt(self, proposal: dict[str, Any]) -> list[str]:
        return read_list_literal(proposal)
