"""Every number of the scheduling and reclaim policies has a range, checked where a policy is read.

Values at the edge of the float range (or integers with hundreds of digits) were accepted and then
broke the fair-share maths of every release, or raised OverflowError (a 500) when compared as
floats. The ranges are documented in docs/scheduling.md, docs/idle-reclaim.md and the API.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from jupyter_dlinfra.core.books.idle import IdleBook
from jupyter_dlinfra.core.books.policies import save_document
from jupyter_dlinfra.core.idle import MAX_POLICY_NAME, PolicyError, ReclaimPolicy
from jupyter_dlinfra.core.idle import RANGES as RECLAIM_RANGES
from jupyter_dlinfra.core.scheduling.policy import RANGES as SCHEDULING_RANGES
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy

from .kit import Kit

HUGE_INT = 10**300


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"half_life": 1e308}, "half_life"),
        ({"half_life": 5e-324}, "half_life"),
        ({"half_life": HUGE_INT}, "half_life"),
        ({"default_share": 1e-320}, "default_share"),
        ({"default_share": 1.7e308}, "default_share"),
        ({"user_shares": {"bob": 1.7e308}}, "user_shares.bob"),
        ({"group_shares": {"ml": 1e-320}}, "group_shares.ml"),
        ({"starvation_limit": 1e308}, "starvation_limit"),
        ({"starvation_limit": HUGE_INT}, "starvation_limit"),
        ({"reservations": HUGE_INT}, "reservations"),
        ({"default_user_quota": HUGE_INT}, "default_user_quota"),
        ({"user_quotas": {"bob": 10**7}}, "user_quotas.bob"),
        ({"group_quotas": {"ml": HUGE_INT}}, "group_quotas.ml"),
        ({"user_shares": {"x" * (MAX_POLICY_NAME + 1): 1.0}}, "user_shares"),
        ({"user_quotas": {"bob\x00": 1}}, "user_quotas"),
    ],
)
def test_scheduling_numbers_out_of_range_are_refused(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError) as err:
        SchedulingPolicy.from_json(doc)
    assert err.value.field == field
    assert len(str(err.value)) < 300, "the message quotes the value, not all of it"


def test_scheduling_ranges_are_inclusive() -> None:
    low = {name: least for name, (least, _) in SCHEDULING_RANGES.items()}
    high = {name: most for name, (_, most) in SCHEDULING_RANGES.items()}
    for ends in (low, high):
        policy = SchedulingPolicy.from_json(
            {
                "half_life": ends["half_life"],
                "starvation_limit": ends["starvation_limit"],
                "default_share": ends["default_share"],
                "user_shares": {"bob": ends["user_shares"]},
                "group_shares": {"ml": ends["group_shares"]},
                "default_user_quota": int(ends["default_user_quota"]),
                "user_quotas": {"x" * MAX_POLICY_NAME: int(ends["user_quotas"])},
                "group_quotas": {"ml": int(ends["group_quotas"])},
                "reservations": int(ends["reservations"]),
                "classes": {
                    "interactive": {"priority": int(ends["priority"])},
                    "batch": {"priority": 0, "preemptible": True},
                },
            }
        )
        assert policy.half_life == ends["half_life"]
        assert policy.reservations == ends["reservations"]


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"idle_after": 1e308}, "idle_after"),
        ({"warn_after": HUGE_INT}, "warn_after"),
        ({"reclaim_after": 1.7e308}, "reclaim_after"),
        ({"keep_extension": 1e308}, "keep_extension"),
        ({"max_keeps": HUGE_INT}, "max_keeps"),
        ({"max_keeps": 1001}, "max_keeps"),
        ({"idle_util_percent": HUGE_INT}, "idle_util_percent"),
        ({"groups": {"ml": {"reclaim_after": HUGE_INT}}}, "groups.ml.reclaim_after"),
        ({"users": {"bob": {"keep_extension": 1e308}}}, "users.bob.keep_extension"),
        ({"users": {"x" * (MAX_POLICY_NAME + 1): {"exempt": True}}}, "users"),
        ({"groups": {"ml\n": {"exempt": True}}}, "groups"),
    ],
)
def test_reclaim_numbers_out_of_range_are_refused(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError) as err:
        ReclaimPolicy.from_json(doc)
    assert err.value.field == field
    assert len(str(err.value)) < 300


def test_reclaim_ranges_are_inclusive() -> None:
    most = {name: high for name, (_, high) in RECLAIM_RANGES.items()}
    policy = ReclaimPolicy.from_json(
        {
            "idle_util_percent": most["idle_util_percent"],
            "idle_after": most["idle_after"] - 2,
            "warn_after": most["warn_after"] - 1,
            "reclaim_after": most["reclaim_after"],
            "keep_extension": most["keep_extension"],
            "max_keeps": most["max_keeps"],
            "users": {"x" * MAX_POLICY_NAME: {"exempt": True}},
        }
    )
    assert policy.default.reclaim_after == most["reclaim_after"]
    assert policy.default.max_keeps == most["max_keeps"]


def test_a_long_unknown_field_is_quoted_short() -> None:
    with pytest.raises(PolicyError) as err:
        SchedulingPolicy.from_json({"x" * 10**6: 1})
    assert len(str(err.value)) < 1000
    with pytest.raises(PolicyError) as err:
        ReclaimPolicy.from_json({"kernel_class": "y" * 10**6})
    assert len(str(err.value)) < 1000


def test_a_stored_reclaim_policy_outside_the_ranges_gives_way_to_the_configured_one(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    """Stored through the API before the ranges existed: reclaim must go on, not fail."""
    book = IdleBook(kit.store, kit.clock)
    save_document(
        kit.store, kit.clock, "reclaim", {"reclaim_after": 1e308}, previous={}, who="admin"
    )
    with caplog.at_level(logging.ERROR, logger="jupyter_dlinfra.core.books.idle"):
        assert book.stored_policy() is None
        assert book.stored_policy() is None
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "stored reclaim policy is not valid" in m]) == 1
