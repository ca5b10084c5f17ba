"""Groups and admins: who belongs where, for policy overrides and for who may change the policy."""

from __future__ import annotations

import contextlib
import grp
import pwd
from collections.abc import Collection, Mapping, Sequence
from functools import lru_cache

__all__ = ["Directory"]


@lru_cache(maxsize=256)
def _unix_groups(user: str) -> tuple[str, ...]:
    try:
        primary = pwd.getpwnam(user).pw_gid
    except KeyError:
        return ()  # not a local account
    names = {g.gr_name for g in grp.getgrall() if user in g.gr_mem}
    with contextlib.suppress(KeyError):
        names.add(grp.getgrgid(primary).gr_name)
    return tuple(sorted(names))


class Directory:
    """Group membership from configuration, plus the system's group database if asked."""

    def __init__(
        self,
        *,
        user_groups: Mapping[str, Sequence[str]],
        admin_users: Collection[str],
        admin_groups: Collection[str],
        unix_groups: bool,
    ) -> None:
        self.user_groups = {u: tuple(gs) for u, gs in user_groups.items()}
        self.admin_users = frozenset(admin_users)
        self.admin_groups = frozenset(admin_groups)
        self.unix_groups = unix_groups

    def groups_of(self, user: str) -> tuple[str, ...]:
        found = set(self.user_groups.get(user, ()))
        if self.unix_groups:
            found.update(_unix_groups(user))
        return tuple(sorted(found))

    def is_admin(self, user: str) -> bool:
        if user in self.admin_users:
            return True
        return bool(self.admin_groups.intersection(self.groups_of(user)))
