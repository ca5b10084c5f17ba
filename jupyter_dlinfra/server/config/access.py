"""Options of who is an admin and who is in which group (policy overrides, shares, quotas)."""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Dict, HasTraits, List, Unicode, validate

from jupyter_dlinfra.server.config.lists import read_list_literal

__all__ = ["AccessOptions"]


class AccessOptions(HasTraits):
    admin_users = List(
        Unicode(),
        config=True,
        help="Users who may change the reclaim policy (PUT /dlinfra/api/policy, the admin "
        "panel) and run policy dry runs. Checked on the server. On a personal server, whoever "
        "logs in acts as its owner (user_name). Empty, with admin_groups empty: nobody; the "
        "policy then comes from this configuration alone.",
    )
    admin_groups = List(
        Unicode(), config=True, help="Groups whose members are admins (see admin_users)."
    )
    user_groups = Dict(
        config=True,
        help="Group membership for policy overrides and admin_groups: {'alice': ['ml']}. "
        "Added to the user's groups in the system's group database (see unix_groups).",
    )
    unix_groups = Bool(
        True,
        config=True,
        help="Also take users' groups from the system's group database when the user name is "
        "a local account. False: user_groups alone.",
    )

    @validate("admin_users", "admin_groups")
    def _read_admins(self, proposal: dict[str, Any]) -> list[str]:
        return read_list_literal(proposal)
