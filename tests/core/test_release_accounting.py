"""A release gives the GPUs back whatever the fair-share bookkeeping says (SQLite and PostgreSQL).

Before, a policy at the edge of the float range made the decayed usage NaN, the usage row
refused it (NOT NULL on SQLite; PostgreSQL stored the NaN), and every release failed: GPUs
stayed held. Now the figures stay finite, and an accounting failure is logged and undone to a
savepoint while the release goes on.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
from sqlalchemy import insert, select, text

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.models import AllocationState
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy
from jupyter_dlinfra.core.store import fairshare, policies

from .kit import Kit

GRANTED = AllocationState.GRANTED
RELEASED = AllocationState.RELEASED


def _usage(kit: Kit) -> dict[str, float]:
    with kit.store.read() as conn:
        return {r.user: r.gpu_seconds for r in conn.execute(select(fairshare))}


def _with_policy(kit: Kit, policy: SchedulingPolicy) -> Ledger:
    # a policy object is built without validation: as a configuration from before the ranges
    kit.ledger = Ledger(kit.store, kit.clock, policy=policy)
    return kit.ledger


def test_a_release_under_a_policy_at_the_float_edge_frees_the_gpus(kit: Kit) -> None:
    """half_life 1e308: GPUs held * half_life overflows, and inf * 0 made the usage NaN."""
    kit.node("node-a")
    ledger = _with_policy(kit, SchedulingPolicy(half_life=1e308))
    kit.kernel("k1")
    kit.kernel("k2", user="bob")
    first = ledger.request(kernel_id="k1", count=4)
    kit.clock.advance(3600)
    ledger.release(first.id, reason="done")  # alice's usage on record
    again = ledger.request(kernel_id="k1", count=4)
    waiting = ledger.request(kernel_id="k2", count=2)
    assert (again.state, waiting.state) == (GRANTED, AllocationState.QUEUED)
    kit.clock.advance(7200)

    ended = ledger.release(again.id, reason="done")

    assert ended.state is RELEASED
    assert ledger.allocation(waiting.id).state is GRANTED, "the queue went on"
    assert {a.id for a in ledger.holders().values()} == {waiting.id}
    usage = _usage(kit)
    assert all(math.isfinite(v) and v >= 0 for v in usage.values()), usage
    standings = ledger.standings()
    assert all(math.isfinite(s.usage_gpu_hours) and 0 <= s.factor <= 1 for s in standings)


def _refuse_usage_rows(kit: Kit) -> None:
    """Make the database refuse every write of a fair-share figure (a trigger)."""
    table = fairshare.name
    with kit.store.engine.begin() as conn:
        if kit.store.is_sqlite:
            for when in ("INSERT", "UPDATE"):
                conn.execute(
                    text(
                        f"CREATE TRIGGER refuse_{when.lower()} BEFORE {when} ON {table} "
                        "BEGIN SELECT RAISE(ABORT, 'accounting is broken'); END"
                    )
                )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_usage() RETURNS trigger AS $$ BEGIN "
                    "RAISE EXCEPTION 'accounting is broken'; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    f"CREATE TRIGGER refuse_usage BEFORE INSERT OR UPDATE ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_usage()"
                )
            )


def test_a_release_whose_accounting_fails_frees_the_gpus_and_logs_it(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    kit.node("node-a")
    kit.kernel("k1")
    kit.kernel("k2", user="bob")
    held = kit.ledger.request(kernel_id="k1", count=4)
    waiting = kit.ledger.request(kernel_id="k2", count=1)
    _refuse_usage_rows(kit)
    kit.clock.advance(60)

    with caplog.at_level(logging.ERROR, logger="jupyter_dlinfra.core.books.ledger"):
        ended = kit.ledger.release(held.id, reason="done")

    assert ended.state is RELEASED
    assert kit.ledger.allocation(waiting.id).state is GRANTED
    assert [e.kind for e in kit.ledger.events()][-2:] == ["released", "granted"]
    assert _usage(kit) == {}
    assert any("could not be recorded" in r.getMessage() for r in caplog.records)
    # and the ledger goes on writing
    kit.kernel("k3")
    assert kit.ledger.request(kernel_id="k3", count=1).state is GRANTED


def test_a_stored_policy_outside_the_ranges_gives_way_to_the_configured_one(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    """Stored through the API before the ranges existed: grants and releases go on."""
    kit.node("node-a")
    kit.kernel("k1")
    held = kit.ledger.request(kernel_id="k1", count=2)
    with kit.store.write() as tx:
        tx.conn.execute(
            insert(policies).values(
                key="scheduling",
                document=json.dumps({"half_life": 1e308, "default_share": 1e-320}),
                updated_at=0.0,
                updated_by="admin",
            )
        )
    kit.clock.advance(600)

    with caplog.at_level(logging.ERROR, logger="jupyter_dlinfra.core.books.ledger"):
        assert kit.ledger.release(held.id, reason="done").state is RELEASED
        assert kit.ledger.scheduling_policy() == kit.ledger.configured_policy

    assert math.isfinite(_usage(kit)["alice"])
    said = [r.getMessage() for r in caplog.records]
    # once per document, not per call
    assert len([m for m in said if "stored scheduling policy is not valid" in m]) == 1
