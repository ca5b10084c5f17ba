"""The reclaim policy: defaults, validation (the field is named), overrides and disabled stages."""

from __future__ import annotations

import math
from typing import Any

import pytest

from jupyter_dlinfra.core.errors import Conflict, InvalidRequest
from jupyter_dlinfra.core.idle import (
    POLICY_FIELDS,
    IdlePolicy,
    IdleState,
    Phase,
    PolicyError,
    PolicyOverride,
    ReclaimAction,
    ReclaimPolicy,
    keep,
    observe,
)

# -- defaults -------------------------------------------------------------------------------------


def test_defaults() -> None:
    p = IdlePolicy()
    assert p.idle_util_percent == 5.0
    assert p.idle_after == 600.0
    assert p.warn_after == 1800.0
    assert p.reclaim_after == 3600.0
    assert p.action is ReclaimAction.RELEASE
    assert p.keep_extension == 3600.0
    assert p.max_keeps == 3
    assert p.detects is True
    assert p.warns is True
    assert p.reclaims is True
    assert p.keeps_allowed is True
    assert p.lead == 1800.0
    assert POLICY_FIELDS == (
        "idle_util_percent",
        "idle_after",
        "warn_after",
        "reclaim_after",
        "action",
        "keep_extension",
        "max_keeps",
    )


def test_default_reclaim_policy_json() -> None:
    rp = ReclaimPolicy()
    assert rp.default == IdlePolicy()
    assert rp.users == {}
    assert rp.groups == {}
    assert rp.to_json() == {
        "idle_util_percent": 5.0,
        "idle_after": 600.0,
        "warn_after": 1800.0,
        "reclaim_after": 3600.0,
        "action": "release",
        "keep_extension": 3600.0,
        "max_keeps": 3,
        "users": {},
        "groups": {},
    }
    assert ReclaimPolicy.from_json({}) == rp


def test_policy_error_is_invalid_request_with_field() -> None:
    err = PolicyError("groups.x.warn_after", "bad")
    assert isinstance(err, InvalidRequest)
    assert err.field == "groups.x.warn_after"
    assert err.reason == "bad_policy"
    assert str(err) == "groups.x.warn_after: bad"


# -- from_json ------------------------------------------------------------------------------------


def test_from_json_partial_update_keeps_base_values() -> None:
    base = ReclaimPolicy.from_json(
        {
            "idle_after": 300,
            "warn_after": 900,
            "reclaim_after": 1200,
            "action": "shutdown",
            "max_keeps": 5,
            "users": {"bob": {"exempt": True}},
            "groups": {"ml": {"reclaim_after": 7200}},
        }
    )
    updated = ReclaimPolicy.from_json({"idle_util_percent": 10}, base=base)
    assert updated.default == IdlePolicy(
        idle_util_percent=10,
        idle_after=300.0,
        warn_after=900.0,
        reclaim_after=1200.0,
        action=ReclaimAction.SHUTDOWN,
        keep_extension=3600.0,
        max_keeps=5,
    )
    assert updated.users == {"bob": PolicyOverride(exempt=True, changes={})}
    assert updated.groups == {"ml": PolicyOverride(changes={"reclaim_after": 7200.0})}
    # base is unchanged
    assert base.default.idle_util_percent == 5.0


def test_from_json_replaces_users_when_given() -> None:
    base = ReclaimPolicy.from_json({"users": {"bob": {"exempt": True}}})
    updated = ReclaimPolicy.from_json({"users": {"carol": {"max_keeps": 1}}}, base=base)
    assert updated.users == {"carol": PolicyOverride(changes={"max_keeps": 1})}
    assert updated.groups == {}


def test_from_json_types() -> None:
    p = ReclaimPolicy.from_json(
        {"idle_after": 60, "warn_after": 120, "reclaim_after": 240, "max_keeps": 2.0}
    ).default
    assert p.idle_after == 60.0 and type(p.idle_after) is float
    assert p.warn_after == 120.0 and type(p.warn_after) is float
    assert p.reclaim_after == 240.0 and type(p.reclaim_after) is float
    assert p.max_keeps == 2 and type(p.max_keeps) is int
    assert p.keep_extension == 3600.0


def test_override_checked_against_new_default() -> None:
    # the override was valid with the old default; a new idle_after makes it invalid
    base = ReclaimPolicy.from_json({"groups": {"fast": {"warn_after": 700, "reclaim_after": 900}}})
    with pytest.raises(PolicyError) as err:
        ReclaimPolicy.from_json({"idle_after": 800}, base=base)
    assert err.value.field == "groups.fast.warn_after"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"idle_after": -1}, "idle_after"),
        ({"warn_after": -0.5}, "warn_after"),
        ({"reclaim_after": -10}, "reclaim_after"),
        ({"keep_extension": -1}, "keep_extension"),
        ({"max_keeps": -1}, "max_keeps"),
        ({"idle_util_percent": -1}, "idle_util_percent"),
        ({"idle_after": "600"}, "idle_after"),
        ({"max_keeps": None}, "max_keeps"),
        ({"keep_extension": [1]}, "keep_extension"),
        ({"idle_after": True}, "idle_after"),
        ({"max_keeps": False}, "max_keeps"),
        ({"idle_util_percent": math.nan}, "idle_util_percent"),
        ({"reclaim_after": math.inf}, "reclaim_after"),
        ({"keep_extension": -math.inf}, "keep_extension"),
        ({"idle_util_percent": 100.5}, "idle_util_percent"),
        ({"max_keeps": 2.5}, "max_keeps"),
        ({"idle_minutes": 5}, "idle_minutes"),
        ({"action": "delete"}, "action"),
        ({"action": None}, "action"),
        ({"idle_after": 2000}, "warn_after"),
        ({"warn_after": 500}, "warn_after"),
        ({"reclaim_after": 1800}, "reclaim_after"),
        ({"reclaim_after": 1000}, "reclaim_after"),
        ({"warn_after": 0}, "reclaim_after"),
        ({"warn_after": 0, "reclaim_after": 60}, "reclaim_after"),
        ({"users": []}, "users"),
        ({"groups": "ml"}, "groups"),
        ({"users": {"": {}}}, "users"),
        ({"users": {"bob": 3}}, "users.bob"),
        ({"users": {"bob": {"exempt": "yes"}}}, "users.bob.exempt"),
        ({"users": {"bob": {"exempt": 1}}}, "users.bob.exempt"),
        ({"users": {"bob": {"nap": 1}}}, "users.bob.nap"),
        ({"groups": {"interns": {"reclaim_after": 1800}}}, "groups.interns.reclaim_after"),
        ({"groups": {"interns": {"reclaim_after": -1}}}, "groups.interns.reclaim_after"),
        ({"groups": {"interns": {"warn_after": 300}}}, "groups.interns.warn_after"),
        ({"groups": {"interns": {"warn_after": 0}}}, "groups.interns.reclaim_after"),
        ({"groups": {"interns": {"action": "nuke"}}}, "groups.interns.action"),
        ({"groups": {"interns": {"max_keeps": 1.5}}}, "groups.interns.max_keeps"),
        ({"groups": {"interns": {"idle_util_percent": 101}}}, "groups.interns.idle_util_percent"),
        ({"users": {"bob": {"idle_after": math.nan}}}, "users.bob.idle_after"),
    ],
)
def test_validation_names_the_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError) as err:
        ReclaimPolicy.from_json(doc)
    assert err.value.field == field
    assert str(err.value).startswith(field + ": ")


def test_not_an_object() -> None:
    docs: list[Any] = [[], "x", None, 3]
    for doc in docs:
        with pytest.raises(PolicyError) as err:
            ReclaimPolicy.from_json(doc)
        assert err.value.field == "policy"


def test_boundary_values_are_accepted() -> None:
    p = ReclaimPolicy.from_json(
        {
            "idle_util_percent": 100,
            "idle_after": 600,
            "warn_after": 600,  # equal to idle_after is allowed
            "reclaim_after": 601,  # just later than warn_after
            "keep_extension": 0,
            "max_keeps": 0,
        }
    ).default
    assert (p.idle_util_percent, p.idle_after, p.warn_after, p.reclaim_after) == (
        100,
        600.0,
        600.0,
        601.0,
    )
    assert p.lead == 1.0
    assert p.keeps_allowed is False


def test_order_not_checked_when_stage_is_off() -> None:
    # detection off: the other values are not compared
    p = ReclaimPolicy.from_json({"idle_util_percent": 0, "warn_after": 1, "reclaim_after": 1})
    assert p.default.detects is False
    assert p.default.warns is False
    assert p.default.reclaims is False
    assert p.default.lead == 0.0
    # warnings only
    q = ReclaimPolicy.from_json({"warn_after": 0, "reclaim_after": 0}).default
    assert (q.detects, q.warns, q.reclaims) == (True, False, False)
    r = ReclaimPolicy.from_json({"reclaim_after": 0}).default
    assert (r.detects, r.warns, r.reclaims) == (True, True, False)
    assert r.lead == 0.0


def test_round_trip() -> None:
    doc = {
        "idle_util_percent": 2.5,
        "idle_after": 120,
        "warn_after": 600,
        "reclaim_after": 900,
        "action": "notify",
        "keep_extension": 1800,
        "max_keeps": 1,
        "users": {"bob": {"exempt": True}, "alice": {"keep_extension": 60}},
        "groups": {"interns": {"reclaim_after": 700, "action": "shutdown"}, "staff": {}},
    }
    policy = ReclaimPolicy.from_json(doc)
    body = policy.to_json()
    assert body == {
        "idle_util_percent": 2.5,
        "idle_after": 120.0,
        "warn_after": 600.0,
        "reclaim_after": 900.0,
        "action": "notify",
        "keep_extension": 1800.0,
        "max_keeps": 1,
        "users": {"alice": {"keep_extension": 60.0}, "bob": {"exempt": True}},
        "groups": {"interns": {"reclaim_after": 700.0, "action": "shutdown"}, "staff": {}},
    }
    assert list(body["users"]) == ["alice", "bob"]
    again = ReclaimPolicy.from_json(body)
    assert again == policy
    assert again.to_json() == body
    assert again.groups["interns"].changes["action"] is ReclaimAction.SHUTDOWN


# -- for_user -------------------------------------------------------------------------------------


def _layered() -> ReclaimPolicy:
    return ReclaimPolicy.from_json(
        {
            "users": {
                "bob": {"max_keeps": 9},
                "eve": {"exempt": True},
                "zed": {"exempt": False, "keep_extension": 60},
            },
            "groups": {
                "alpha": {"max_keeps": 1, "keep_extension": 120, "reclaim_after": 5000},
                "beta": {"max_keeps": 2, "reclaim_after": 4000},
                "vip": {"exempt": True},
            },
        }
    )


def test_for_user_without_overrides_is_default() -> None:
    rp = _layered()
    assert rp.for_user("nobody") is rp.default
    assert rp.for_user("nobody", ["unknown-group"]) is rp.default


def test_for_user_groups_alphabetical_then_user() -> None:
    rp = _layered()
    # beta after alpha, whatever order the groups come in
    for groups in (["alpha", "beta"], ["beta", "alpha"], ("beta", "alpha", "beta")):
        p = rp.for_user("carol", groups)
        assert p is not None
        assert p.max_keeps == 2
        assert p.reclaim_after == 4000.0
        assert p.keep_extension == 120.0
        assert p.warn_after == 1800.0
    # the user's own override comes last
    p = rp.for_user("bob", ["beta", "alpha"])
    assert p == IdlePolicy(max_keeps=9, reclaim_after=4000.0, keep_extension=120.0)
    assert rp.for_user("bob") == IdlePolicy(max_keeps=9)
    assert rp.for_user("zed", ["alpha"]) == IdlePolicy(
        max_keeps=1, keep_extension=60.0, reclaim_after=5000.0
    )


def test_for_user_exempt_via_user_or_any_group() -> None:
    rp = _layered()
    assert rp.for_user("eve") is None
    assert rp.for_user("eve", ["alpha"]) is None
    assert rp.for_user("carol", ["vip"]) is None
    assert rp.for_user("carol", ["alpha", "vip", "beta"]) is None
    # a user override with exempt false does not undo a group's exemption
    assert rp.for_user("zed", ["vip"]) is None


# -- values that switch a stage off ---------------------------------------------------------------


def _run(policy: IdlePolicy, times: list[float], util: float = 0.0) -> tuple[IdleState, list[str]]:
    state = IdleState(kernel_id="k")
    kinds: list[str] = []
    for at in times:
        state, out = observe(state, util, at, policy)
        kinds.extend(t.kind for t in out)
    return state, kinds


LONG = [0.0, 600.0, 1800.0, 3600.0, 10_000.0, 100_000.0]


@pytest.mark.parametrize(
    "doc", [{"idle_util_percent": 0}, {"idle_after": 0, "warn_after": 0, "reclaim_after": 0}]
)
def test_detection_off_never_idle(doc: dict[str, Any]) -> None:
    policy = ReclaimPolicy.from_json(doc).default
    assert policy.detects is False
    state, kinds = _run(policy, LONG)
    assert kinds == []
    assert state.phase is Phase.ACTIVE
    assert state.idle_since is None
    assert state.last_util == 0.0
    assert state.updated_at == 100_000.0


def test_idle_after_zero_alone_switches_detection_off() -> None:
    policy = ReclaimPolicy.from_json({"idle_after": 0}).default
    assert policy.detects is False
    state, kinds = _run(policy, LONG)
    assert kinds == []
    assert state.phase is Phase.ACTIVE


def test_warn_after_zero_never_warned() -> None:
    policy = ReclaimPolicy.from_json({"warn_after": 0, "reclaim_after": 0}).default
    state, kinds = _run(policy, LONG)
    assert kinds == ["idle"]
    assert state.phase is Phase.IDLE
    assert state.warned_at is None
    assert state.warn_at(policy) is None
    assert state.reclaim_at(policy) is None


def test_reclaim_after_zero_warned_never_reclaimed() -> None:
    policy = ReclaimPolicy.from_json({"reclaim_after": 0}).default
    state, kinds = _run(policy, LONG)
    assert kinds == ["idle", "warned"]
    assert state.phase is Phase.WARNED
    assert state.warned_at == 1800.0
    assert state.reclaimed_at is None
    assert state.reclaim_at(policy) is None


@pytest.mark.parametrize("doc", [{"keep_extension": 0}, {"max_keeps": 0}])
def test_keep_disabled(doc: dict[str, Any]) -> None:
    policy = ReclaimPolicy.from_json(doc).default
    assert policy.keeps_allowed is False
    state, kinds = _run(policy, [0.0, 600.0, 1800.0])
    assert kinds == ["idle", "warned"]
    assert state.keeps_left(policy) == 0
    with pytest.raises(Conflict):
        keep(state, 1900.0, policy)


def test_combined_overrides_keep_the_warning_lead() -> None:
    """Each override is valid alone; together they must not make reclaim come before warning.

    ``alpha`` moves the warning to 3000 s (valid with the default reclaim_after 3600), ``beta``
    moves the reclaim to 2000 s (valid with the default warn_after 1800). A user in both groups
    must not end up with reclaim_after <= warn_after, which from_json rejects for any single
    policy: either the document is refused, or the combined policy keeps the order.
    """
    doc = {"groups": {"alpha": {"warn_after": 3000}, "beta": {"reclaim_after": 2000}}}
    try:
        rp = ReclaimPolicy.from_json(doc)
    except PolicyError:
        return
    combined = rp.for_user("carol", ["alpha", "beta"])
    assert combined is not None
    assert combined.reclaim_after > combined.warn_after, (
        f"warn_after={combined.warn_after}, reclaim_after={combined.reclaim_after}"
    )
