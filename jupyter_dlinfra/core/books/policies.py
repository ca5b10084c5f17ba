"""Admin policies kept in the ledger's store: one JSON document per key, and one audit row per
value that changed (who, when, old, new). Shared by the reclaim and the scheduling policies, over
the store they are kept in (not the ledger, which builds on this module)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select

from jupyter_dlinfra.core.books.events import write_event
from jupyter_dlinfra.core.clock import Clock
from jupyter_dlinfra.core.store import Store, policies, policy_changes

__all__ = [
    "SCHEDULING_PREFIX",
    "PolicyChange",
    "StoredDocument",
    "UnreadablePolicy",
    "flatten",
    "load_document",
    "policy_changes_of",
    "save_document",
]

#: audit rows of the scheduling policy start with this (kept apart from the reclaim policy's)
SCHEDULING_PREFIX = "scheduling."


class UnreadablePolicy:
    """A stored policy document that no longer reads (stored before the policies' ranges, or by
    hand) gives way to the configured policy: the ledger must still grant, release and reclaim.
    The log says so once per document, not at every read."""

    def __init__(self, what: str, *, endpoint: str, log: logging.Logger) -> None:
        self._what = what
        self._endpoint = endpoint
        self._log = log
        self._said: Any = None

    def report(self, document: Any, err: Exception) -> None:
        if document == self._said:
            return
        self._said = document
        self._log.error(
            "the stored %s policy is not valid (%s); the configured policy applies until an "
            "admin stores a new one (PUT %s)",
            self._what,
            err,
            self._endpoint,
        )


@dataclass(frozen=True, kw_only=True)
class PolicyChange:
    seq: int
    at: float
    who: str
    field: str
    old: Any
    new: Any


@dataclass(frozen=True, kw_only=True)
class StoredDocument:
    document: Any
    updated_at: float
    updated_by: str


def flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"users": {"ann": {"x": 1}}}`` -> ``{"users.ann.x": 1}``: one audit row per value."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, Mapping):
            if prefix:  # an override with no fields yet (users.ann: {}) is still a change
                flat[f"{prefix}{key}"] = {}
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_document(store: Store, key: str) -> StoredDocument | None:
    with store.read() as conn:
        row = conn.execute(select(policies).where(policies.c.key == key)).first()
    if row is None:
        return None
    return StoredDocument(
        document=json.loads(row.document), updated_at=row.updated_at, updated_by=row.updated_by
    )


def save_document(
    store: Store,
    clock: Clock,
    key: str,
    document: Mapping[str, Any],
    *,
    previous: Mapping[str, Any],
    who: str,
    field_prefix: str = "",
) -> list[str]:
    """Store ``document`` under ``key``; audit each value that differs from ``previous``."""
    now = clock.now()
    old, new = flatten(previous), flatten(document)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    with store.write() as tx:
        conn = tx.conn
        conn.execute(delete(policies).where(policies.c.key == key))
        conn.execute(
            insert(policies).values(
                key=key, document=json.dumps(document), updated_at=now, updated_by=who
            )
        )
        for name in changed:
            conn.execute(
                insert(policy_changes).values(
                    at=now,
                    who=who,
                    field=field_prefix + name,
                    old=json.dumps(old.get(name)),
                    new=json.dumps(new.get(name)),
                )
            )
        if changed:
            write_event(
                tx,
                "policy_changed",
                at=now,
                detail={"who": who, "fields": [field_prefix + c for c in changed]},
            )
        tx.touch()
    return [field_prefix + c for c in changed]


def policy_changes_of(
    store: Store, *, prefix: str | None = None, exclude: str | None = None, limit: int = 100
) -> list[PolicyChange]:
    """The latest changes first; ``prefix`` keeps, ``exclude`` drops fields starting with it."""
    query = select(policy_changes).order_by(policy_changes.c.seq.desc()).limit(limit)
    if prefix is not None:
        query = query.where(policy_changes.c.field.startswith(prefix, autoescape=True))
    if exclude is not None:
        query = query.where(~policy_changes.c.field.startswith(exclude, autoescape=True))
    with store.read() as conn:
        rows = conn.execute(query).all()
    return [
        PolicyChange(
            seq=r.seq,
            at=r.at,
            who=r.who,
            field=r.field,
            old=json.loads(r.old) if r.old is not None else None,
            new=json.loads(r.new) if r.new is not None else None,
        )
        for r in rows
    ]
