"""The scheduling policy document: defaults, validation naming the field, partial updates over a
base, lookups, and the to_json/from_json round trip."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from jupyter_dlinfra.core.errors import InvalidRequest
from jupyter_dlinfra.core.idle import PolicyError
from jupyter_dlinfra.core.scheduling.policy import (
    DEFAULT_CLASSES,
    FIELDS,
    PriorityClass,
    SchedulingPolicy,
)

# -- defaults -------------------------------------------------------------------------------------


def test_defaults() -> None:
    p = SchedulingPolicy()
    assert p.classes == DEFAULT_CLASSES
    assert [(c.name, c.priority, c.preemptible) for c in p.classes] == [
        ("interactive", 100, False),
        ("batch", 50, True),
        ("low", 10, True),
    ]
    assert p.kernel_class == "interactive"
    assert p.job_class == "batch"
    assert p.fair_share is True
    assert p.half_life == 7 * 86400.0
    assert p.default_share == 1.0
    assert p.user_shares == {}
    assert p.group_shares == {}
    assert p.default_user_quota is None
    assert p.user_quotas == {}
    assert p.group_quotas == {}
    assert p.borrowing is True
    assert p.preemption is True
    assert p.reservations == 16
    assert p.starvation_limit == 86400.0
    assert SchedulingPolicy.from_json({}) == p


def test_default_json_lists_every_field() -> None:
    doc = SchedulingPolicy().to_json()
    assert tuple(doc) == FIELDS
    assert doc == {
        "classes": {
            "interactive": {"priority": 100, "preemptible": False},
            "batch": {"priority": 50, "preemptible": True},
            "low": {"priority": 10, "preemptible": True},
        },
        "kernel_class": "interactive",
        "job_class": "batch",
        "fair_share": True,
        "half_life": 604800.0,
        "default_share": 1.0,
        "user_shares": {},
        "group_shares": {},
        "default_user_quota": None,
        "user_quotas": {},
        "group_quotas": {},
        "borrowing": True,
        "preemption": True,
        "reservations": 16,
        "starvation_limit": 86400.0,
    }


# -- lookups --------------------------------------------------------------------------------------


def test_class_lookup() -> None:
    p = SchedulingPolicy()
    assert p.klass("batch") == PriorityClass(name="batch", priority=50, preemptible=True)
    assert set(p.class_map) == {"interactive", "batch", "low"}
    assert p.class_names == "interactive, batch, low"
    for bad in ("nope", None, ""):
        with pytest.raises(PolicyError) as err:
            p.klass(bad)
        assert err.value.field == "class"
        assert "interactive, batch, low" in str(err.value)


def test_shares_quotas_and_accounts() -> None:
    p = SchedulingPolicy.from_json(
        {
            "default_share": 2,
            "user_shares": {"bob": 5},
            "group_shares": {"ml": 3, "cv": 4},
            "default_user_quota": 4,
            "user_quotas": {"bob": 8, "eve": 0},
        }
    )
    assert p.share_of_user("bob") == 5.0
    assert p.share_of_user("alice") == 2.0
    assert p.share_of_group("ml") == 3.0
    assert p.share_of_group("other") == 2.0
    assert p.quota_of_user("bob") == 8
    assert p.quota_of_user("eve") == 0
    assert p.quota_of_user("alice") == 4
    assert SchedulingPolicy().quota_of_user("alice") is None
    # the first group (sorted) that has a share; none: the default account ''
    assert p.account_of(["ml", "cv"]) == "cv"
    assert p.account_of(("zz", "ml")) == "ml"
    assert p.account_of(["zz"]) == ""
    assert p.account_of([]) == ""


# -- from_json ------------------------------------------------------------------------------------


def test_every_field_parsed_with_its_type() -> None:
    p = SchedulingPolicy.from_json(
        {
            "classes": {
                "low": {"priority": -5, "preemptible": True},
                "kern": {"priority": 10},
                "train": {"priority": 7, "preemptible": False},
            },
            "kernel_class": "kern",
            "job_class": "low",
            "fair_share": False,
            "half_life": 3600,
            "default_share": 2,
            "user_shares": {"bob": 3},
            "group_shares": {"ml": 0.5},
            "default_user_quota": 4.0,
            "user_quotas": {"bob": 2, "eve": 0},
            "group_quotas": {"ml": 6.0},
            "borrowing": False,
            "preemption": False,
            "reservations": 0,
            "starvation_limit": 0,
        }
    )
    # classes are sorted by priority, highest first; preemptible defaults to false
    assert p.classes == (
        PriorityClass(name="kern", priority=10, preemptible=False),
        PriorityClass(name="train", priority=7, preemptible=False),
        PriorityClass(name="low", priority=-5, preemptible=True),
    )
    assert p.kernel_class == "kern"
    assert p.job_class == "low"
    assert p.fair_share is False
    assert p.half_life == 3600.0 and type(p.half_life) is float
    assert p.default_share == 2.0 and type(p.default_share) is float
    assert p.user_shares == {"bob": 3.0}
    assert type(p.user_shares["bob"]) is float
    assert p.group_shares == {"ml": 0.5}
    assert p.default_user_quota == 4 and type(p.default_user_quota) is int
    assert p.user_quotas == {"bob": 2, "eve": 0}
    assert p.group_quotas == {"ml": 6} and type(p.group_quotas["ml"]) is int
    assert p.borrowing is False
    assert p.preemption is False
    assert p.reservations == 0 and type(p.reservations) is int
    assert p.starvation_limit == 0.0 and type(p.starvation_limit) is float


def test_classes_with_equal_priority_sorted_by_name() -> None:
    p = SchedulingPolicy.from_json(
        {
            "classes": {
                "zeta": {"priority": 5},
                "alpha": {"priority": 5},
                "interactive": {"priority": 9},
                "batch": {"priority": 1, "preemptible": True},
            }
        }
    )
    assert [c.name for c in p.classes] == ["interactive", "alpha", "zeta", "batch"]


def test_default_user_quota_may_be_reset_to_none() -> None:
    base = SchedulingPolicy.from_json({"default_user_quota": 3})
    assert (
        SchedulingPolicy.from_json({"default_user_quota": None}, base=base).default_user_quota
        is None
    )


def test_partial_document_keeps_base_values() -> None:
    base = SchedulingPolicy.from_json(
        {
            "classes": {
                "interactive": {"priority": 100},
                "batch": {"priority": 50, "preemptible": True},
                "scavenger": {"priority": 1, "preemptible": True},
            },
            "job_class": "scavenger",
            "half_life": 3600,
            "user_quotas": {"bob": 2},
            "group_quotas": {"ml": 8},
            "group_shares": {"ml": 3},
            "reservations": 2,
        }
    )
    updated = SchedulingPolicy.from_json(
        {"fair_share": False, "user_quotas": {"eve": 1}}, base=base
    )
    assert updated.fair_share is False
    # a map given in the document replaces the base's map
    assert updated.user_quotas == {"eve": 1}
    # everything else is the base's
    assert updated.classes == base.classes
    assert updated.job_class == "scavenger"
    assert updated.half_life == 3600.0
    assert updated.group_quotas == {"ml": 8}
    assert updated.group_shares == {"ml": 3.0}
    assert updated.reservations == 2
    # the base is unchanged
    assert base.fair_share is True
    assert base.user_quotas == {"bob": 2}


def test_partial_document_checked_against_base() -> None:
    base = SchedulingPolicy.from_json(
        {
            "classes": {"kern": {"priority": 9}, "jobs": {"priority": 1, "preemptible": True}},
            "kernel_class": "kern",
            "job_class": "jobs",
        }
    )
    # job_class valid only with the base's classes
    assert SchedulingPolicy.from_json({"job_class": "kern"}, base=base).job_class == "kern"
    with pytest.raises(PolicyError) as err:
        SchedulingPolicy.from_json({"job_class": "batch"}, base=base)
    assert err.value.field == "job_class"
    # new classes that drop the base's kernel class
    with pytest.raises(PolicyError) as err:
        SchedulingPolicy.from_json({"classes": {"jobs": {"priority": 1}}}, base=base)
    assert err.value.field == "kernel_class"
    # new classes that make the base's kernel class preemptible
    with pytest.raises(PolicyError) as err:
        SchedulingPolicy.from_json(
            {"classes": {"kern": {"priority": 9, "preemptible": True}, "jobs": {"priority": 1}}},
            base=base,
        )
    assert err.value.field == "kernel_class"


def test_kernel_class_must_not_be_preemptible() -> None:
    with pytest.raises(PolicyError) as err:
        SchedulingPolicy.from_json({"kernel_class": "batch"})
    assert err.value.field == "kernel_class"
    assert "preempt" in str(err.value)
    with pytest.raises(PolicyError) as err:
        SchedulingPolicy.from_json(
            {
                "classes": {
                    "interactive": {"priority": 1, "preemptible": True},
                    "batch": {"priority": 0},
                }
            }
        )
    assert err.value.field == "kernel_class"
    # the job class may be either
    assert SchedulingPolicy.from_json({"job_class": "interactive"}).job_class == "interactive"
    assert SchedulingPolicy.from_json({"job_class": "low"}).job_class == "low"


def test_unknown_field_is_named() -> None:
    with pytest.raises(PolicyError) as err:
        SchedulingPolicy.from_json({"zzz": 1, "quota": 3, "fair_share": True})
    assert err.value.field == "quota"  # the first unknown, sorted
    assert "half_life" in str(err.value)  # the message lists the fields


@pytest.mark.parametrize("doc", [[], "x", None, 3, [("fair_share", True)]])
def test_not_an_object(doc: Any) -> None:
    with pytest.raises(PolicyError) as err:
        SchedulingPolicy.from_json(doc)
    assert err.value.field == "scheduling"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        # classes
        ({"classes": {}}, "classes"),
        ({"classes": []}, "classes"),
        ({"classes": "interactive"}, "classes"),
        ({"classes": None}, "classes"),
        ({"classes": {"bad name": {"priority": 1}}}, "classes"),
        ({"classes": {"": {"priority": 1}}}, "classes"),
        ({"classes": {"-x": {"priority": 1}}}, "classes"),
        ({"classes": {"x" * 65: {"priority": 1}}}, "classes"),
        ({"classes": {"interactive": {"priority": 100}, "batch": 50}}, "classes.batch"),
        ({"classes": {"interactive": {"priority": 100}, "batch": None}}, "classes.batch"),
        ({"classes": {"interactive": {"priority": 100}, "batch": {}}}, "classes.batch.priority"),
        (
            {"classes": {"interactive": {"priority": 100}, "batch": {"preemptible": True}}},
            "classes.batch.priority",
        ),
        (
            {"classes": {"interactive": {"priority": 100}, "batch": {"priority": "50"}}},
            "classes.batch.priority",
        ),
        (
            {"classes": {"interactive": {"priority": 100}, "batch": {"priority": 50.5}}},
            "classes.batch.priority",
        ),
        (
            {"classes": {"interactive": {"priority": 100}, "batch": {"priority": 50.0}}},
            "classes.batch.priority",
        ),
        (
            {"classes": {"interactive": {"priority": 100}, "batch": {"priority": True}}},
            "classes.batch.priority",
        ),
        (
            {"classes": {"interactive": {"priority": 100}, "batch": {"priority": None}}},
            "classes.batch.priority",
        ),
        (
            {"classes": {"interactive": {"priority": 100}, "batch": {"priority": 10**6 + 1}}},
            "classes.batch.priority",
        ),
        (
            {"classes": {"interactive": {"priority": 100}, "batch": {"priority": -(10**6) - 1}}},
            "classes.batch.priority",
        ),
        (
            {
                "classes": {
                    "interactive": {"priority": 100},
                    "batch": {"priority": 50, "preemptible": "yes"},
                }
            },
            "classes.batch.preemptible",
        ),
        (
            {
                "classes": {
                    "interactive": {"priority": 100},
                    "batch": {"priority": 50, "preemptible": 1},
                }
            },
            "classes.batch.preemptible",
        ),
        (
            {"classes": {"interactive": {"priority": 100}, "batch": {"priority": 50, "x": 1}}},
            "classes.batch.x",
        ),
        # class names
        ({"kernel_class": 3}, "kernel_class"),
        ({"kernel_class": None}, "kernel_class"),
        ({"kernel_class": "nope"}, "kernel_class"),
        ({"job_class": ["batch"]}, "job_class"),
        ({"job_class": "nope"}, "job_class"),
        ({"classes": {"interactive": {"priority": 100}}}, "job_class"),
        # switches
        ({"fair_share": 1}, "fair_share"),
        ({"fair_share": "true"}, "fair_share"),
        ({"fair_share": None}, "fair_share"),
        ({"borrowing": 0}, "borrowing"),
        ({"preemption": "no"}, "preemption"),
        # seconds
        ({"half_life": 0}, "half_life"),
        ({"half_life": -1}, "half_life"),
        ({"half_life": "3600"}, "half_life"),
        ({"half_life": True}, "half_life"),
        ({"half_life": None}, "half_life"),
        ({"half_life": math.nan}, "half_life"),
        ({"half_life": math.inf}, "half_life"),
        ({"starvation_limit": -1}, "starvation_limit"),
        ({"starvation_limit": -math.inf}, "starvation_limit"),
        ({"starvation_limit": math.nan}, "starvation_limit"),
        ({"starvation_limit": False}, "starvation_limit"),
        # shares
        ({"default_share": 0}, "default_share"),
        ({"default_share": -2}, "default_share"),
        ({"default_share": "1"}, "default_share"),
        ({"default_share": math.inf}, "default_share"),
        ({"user_shares": []}, "user_shares"),
        ({"user_shares": "bob"}, "user_shares"),
        ({"user_shares": {"": 1}}, "user_shares"),
        ({"user_shares": {"  ": 1}}, "user_shares"),
        ({"user_shares": {"bob": 0}}, "user_shares.bob"),
        ({"user_shares": {"bob": -1}}, "user_shares.bob"),
        ({"user_shares": {"bob": "2"}}, "user_shares.bob"),
        ({"user_shares": {"bob": math.nan}}, "user_shares.bob"),
        ({"user_shares": {"bob": True}}, "user_shares.bob"),
        ({"group_shares": None}, "group_shares"),
        ({"group_shares": {"ml": 0}}, "group_shares.ml"),
        ({"group_shares": {"ml": None}}, "group_shares.ml"),
        # quotas
        ({"default_user_quota": -1}, "default_user_quota"),
        ({"default_user_quota": 1.5}, "default_user_quota"),
        ({"default_user_quota": "2"}, "default_user_quota"),
        ({"default_user_quota": True}, "default_user_quota"),
        ({"default_user_quota": math.nan}, "default_user_quota"),
        ({"default_user_quota": math.inf}, "default_user_quota"),
        ({"user_quotas": [1]}, "user_quotas"),
        ({"user_quotas": {"": 1}}, "user_quotas"),
        ({"user_quotas": {"bob": -1}}, "user_quotas.bob"),
        ({"user_quotas": {"bob": 2.5}}, "user_quotas.bob"),
        ({"user_quotas": {"bob": None}}, "user_quotas.bob"),
        ({"user_quotas": {"bob": False}}, "user_quotas.bob"),
        ({"user_quotas": {"bob": math.nan}}, "user_quotas.bob"),
        ({"group_quotas": "ml"}, "group_quotas"),
        ({"group_quotas": {"ml": -3}}, "group_quotas.ml"),
        ({"group_quotas": {"ml": "3"}}, "group_quotas.ml"),
        ({"group_quotas": {"ml": math.inf}}, "group_quotas.ml"),
        # reservations
        ({"reservations": -1}, "reservations"),
        ({"reservations": 0.5}, "reservations"),
        ({"reservations": None}, "reservations"),
        ({"reservations": "16"}, "reservations"),
        ({"reservations": True}, "reservations"),
        ({"reservations": math.nan}, "reservations"),
        ({"reservations": math.inf}, "reservations"),
    ],
)
def test_validation_names_the_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError) as err:
        SchedulingPolicy.from_json(doc)
    assert err.value.field == field
    assert str(err.value).startswith(field + ": ")
    assert isinstance(err.value, InvalidRequest)
    assert err.value.reason == "bad_policy"


def test_nan_and_infinity_from_a_json_body_are_a_policy_error() -> None:
    """Python's json module accepts NaN and Infinity: such a body is a 400, never a 500."""
    for name in ("reservations", "default_user_quota"):
        for literal in ("NaN", "Infinity", "-Infinity"):
            doc = json.loads(f'{{"{name}": {literal}}}')
            with pytest.raises(PolicyError) as err:
                SchedulingPolicy.from_json(doc)
            assert err.value.field == name


def test_boundary_values_are_accepted() -> None:
    p = SchedulingPolicy.from_json(
        {
            "classes": {
                "interactive": {"priority": 10**6},
                "batch": {"priority": -(10**6), "preemptible": True},
            },
            "half_life": 1.0,
            "default_share": 1e-6,
            "default_user_quota": 0,
            "user_quotas": {"bob": 0},
            "group_quotas": {"ml": 0},
            "reservations": 0,
            "starvation_limit": 0,
        }
    )
    assert p.klass("interactive").priority == 10**6
    assert p.klass("batch").priority == -(10**6)
    assert p.default_user_quota == 0
    assert p.quota_of_user("bob") == 0
    assert p.reservations == 0


def test_error_does_not_half_apply() -> None:
    base = SchedulingPolicy()
    with pytest.raises(PolicyError):
        SchedulingPolicy.from_json({"fair_share": False, "reservations": -1}, base=base)
    assert base.fair_share is True
    assert base.reservations == 16


# -- round trip -----------------------------------------------------------------------------------


def test_round_trip() -> None:
    doc = {
        "classes": {
            "interactive": {"priority": 100, "preemptible": False},
            "training": {"priority": 60, "preemptible": False},
            "batch": {"priority": 50, "preemptible": True},
            "scavenger": {"priority": -1, "preemptible": True},
        },
        "kernel_class": "interactive",
        "job_class": "training",
        "fair_share": False,
        "half_life": 7200.0,
        "default_share": 2.0,
        "user_shares": {"zed": 1.5, "bob": 4.0},
        "group_shares": {"ml": 3.0, "cv": 1.0},
        "default_user_quota": 4,
        "user_quotas": {"bob": 8, "eve": 0},
        "group_quotas": {"ml": 16},
        "borrowing": False,
        "preemption": False,
        "reservations": 3,
        "starvation_limit": 0.0,
    }
    policy = SchedulingPolicy.from_json(doc)
    body = policy.to_json()
    # maps come back sorted by name; everything else as given
    assert body == doc
    assert list(body["user_shares"]) == ["bob", "zed"]
    assert list(body["group_shares"]) == ["cv", "ml"]
    assert list(body["classes"]) == ["interactive", "training", "batch", "scavenger"]
    # and through JSON text
    again = SchedulingPolicy.from_json(json.loads(json.dumps(body)))
    assert again == policy
    assert again.to_json() == body
    # a document applied over any base gives the same policy: to_json names every field
    other = SchedulingPolicy.from_json({"reservations": 9, "user_quotas": {"x": 1}})
    assert SchedulingPolicy.from_json(body, base=other) == policy


def test_default_round_trip() -> None:
    p = SchedulingPolicy()
    assert SchedulingPolicy.from_json(p.to_json()) == p
    assert SchedulingPolicy.from_json(json.loads(json.dumps(p.to_json()))) == p
