"""The per-kernel idle state machine: ``observe`` and ``keep`` on explicit times."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from jupyter_dlinfra.core.errors import Conflict
from jupyter_dlinfra.core.idle import (
    IdlePolicy,
    IdleState,
    Phase,
    ReclaimAction,
    Transition,
    keep,
    observe,
)

K = "k1"
T0 = 10_000.0
#: idle 600 s, warn 1800 s, reclaim 3600 s, lead 1800 s, keep 3600 s, 3 keeps
POLICY = IdlePolicy()


def feed(
    state: IdleState, readings: Sequence[tuple[float, float]], policy: IdlePolicy | None = POLICY
) -> tuple[IdleState, list[Transition]]:
    """(seconds after T0, utilisation) readings, in order."""
    out: list[Transition] = []
    for offset, util in readings:
        state, found = observe(state, util, T0 + offset, policy)
        out.extend(found)
    return state, out


def fresh() -> IdleState:
    return IdleState(kernel_id=K)


def to_phase(phase: Phase) -> IdleState:
    """A state idle since T0 that has just entered ``phase`` (ACTIVE: idle stretch started)."""
    readings = {
        Phase.ACTIVE: [(0, 0)],
        Phase.IDLE: [(0, 0), (600, 0)],
        Phase.WARNED: [(0, 0), (600, 0), (1800, 0)],
        Phase.RECLAIMED: [(0, 0), (600, 0), (1800, 0), (3600, 0)],
    }[phase]
    state, _ = feed(fresh(), readings)
    assert state.phase is phase
    return state


# -- the way down ------------------------------------------------------------------------------


def test_first_reading_starts_the_stretch() -> None:
    state, out = observe(fresh(), 1.5, T0, POLICY)
    assert out == []
    assert state == IdleState(kernel_id=K, idle_since=T0, last_util=1.5, updated_at=T0)
    assert state.warn_at(POLICY) == T0 + 1800
    assert state.reclaim_at(POLICY) == T0 + 3600
    assert state.keeps_left(POLICY) == 3


def test_active_idle_warned_reclaimed_exact_transitions() -> None:
    state = fresh()
    steps: list[tuple[float, float, list[Transition], Phase]] = [
        (0, 0.0, [], Phase.ACTIVE),
        (599, 4.9, [], Phase.ACTIVE),
        (
            600,
            1.0,
            [Transition(kernel_id=K, kind="idle", at=T0 + 600, detail={"idle_s": 600.0})],
            Phase.IDLE,
        ),
        (1799, 0.0, [], Phase.IDLE),
        (
            1800,
            0.0,
            [
                Transition(
                    kernel_id=K,
                    kind="warned",
                    at=T0 + 1800,
                    detail={
                        "idle_s": 1800.0,
                        "reclaim_at": T0 + 3600,
                        "action": "release",
                        "keeps_left": 3,
                    },
                )
            ],
            Phase.WARNED,
        ),
        (3599, 0.0, [], Phase.WARNED),
        (
            3600,
            2.0,
            [
                Transition(
                    kernel_id=K,
                    kind="reclaimed",
                    at=T0 + 3600,
                    detail={"idle_s": 3600.0, "action": "release"},
                )
            ],
            Phase.RECLAIMED,
        ),
    ]
    for offset, util, expected, phase in steps:
        state, out = observe(state, util, T0 + offset, POLICY)
        assert out == expected, offset
        assert state.phase is phase, offset
        assert state.last_util == util
        assert state.updated_at == T0 + offset
        assert state.idle_since == T0
    assert state == IdleState(
        kernel_id=K,
        phase=Phase.RECLAIMED,
        idle_since=T0,
        warned_at=T0 + 1800,
        keeps=0,
        hold_until=None,
        reclaimed_at=T0 + 3600,
        last_util=2.0,
        updated_at=T0 + 3600,
    )


def test_warn_at_idle_after_gives_two_transitions_but_no_reclaim() -> None:
    policy = IdlePolicy(idle_after=600, warn_after=600, reclaim_after=700)
    state, out = feed(fresh(), [(0, 0), (600, 0)], policy)
    assert [(t.kind, t.at) for t in out] == [("idle", T0 + 600), ("warned", T0 + 600)]
    assert out[1].detail["reclaim_at"] == T0 + 700
    state, out = feed(state, [(699, 0)], policy)
    assert out == []
    state, out = feed(state, [(700, 0)], policy)
    assert [(t.kind, t.at) for t in out] == [("reclaimed", T0 + 700)]


# -- back to active ----------------------------------------------------------------------------


@pytest.mark.parametrize("util", [5.0, 5.01, 100.0])
@pytest.mark.parametrize("phase", [Phase.IDLE, Phase.WARNED, Phase.RECLAIMED])
def test_use_returns_to_active_from_every_phase(phase: Phase, util: float) -> None:
    state = to_phase(phase)
    state, out = observe(state, util, T0 + 5000, POLICY)
    assert out == [
        Transition(
            kernel_id=K,
            kind="active",
            at=T0 + 5000,
            detail={"was": phase.value, "idle_s": 5000.0},
        )
    ]
    assert state == IdleState(kernel_id=K, last_util=util, updated_at=T0 + 5000)


def test_use_before_idle_after_ends_the_stretch_quietly() -> None:
    state, out = feed(fresh(), [(0, 0), (500, 0), (550, 60), (1000, 0)])
    assert out == []
    # the stretch starts again at the last reading
    assert state.idle_since == T0 + 1000
    assert state.phase is Phase.ACTIVE
    state, out = feed(state, [(1599, 0)])
    assert out == []
    state, out = feed(state, [(1600, 0)])
    assert out == [Transition(kernel_id=K, kind="idle", at=T0 + 1600, detail={"idle_s": 600.0})]


@pytest.mark.parametrize("phase", [Phase.IDLE, Phase.WARNED])
def test_use_resets_keeps(phase: Phase) -> None:
    state = to_phase(phase)
    state, _ = keep(state, T0 + 2000, POLICY)
    state, _ = keep(state, T0 + 2001, POLICY)
    assert state.keeps == 2
    assert state.keeps_left(POLICY) == 1
    state, out = observe(state, 50.0, T0 + 2100, POLICY)
    assert [t.kind for t in out] == ["active"]
    assert out[0].detail == {"was": "idle", "idle_s": 2100.0}
    assert state.keeps == 0
    assert state.hold_until is None
    assert state.warned_at is None
    assert state.keeps_left(POLICY) == 3


def test_busy_gpu_never_idles() -> None:
    """A silent cell that keeps a GPU busy: no output, but the kernel is active."""
    readings = [(float(s), 80.0) for s in range(0, 100_001, 250)]
    state, out = feed(fresh(), readings)
    assert out == []
    assert state == IdleState(kernel_id=K, last_util=80.0, updated_at=T0 + 100_000)


def test_exempt_policy_none_is_active() -> None:
    state, out = feed(fresh(), [(0, 0), (50_000, 0)], None)
    assert out == []
    assert state == IdleState(kernel_id=K, last_util=0.0, updated_at=T0 + 50_000)
    # a kernel whose owner becomes exempt while idle goes back to active
    state, out = observe(to_phase(Phase.WARNED), 0.0, T0 + 2000, None)
    assert out == [
        Transition(
            kernel_id=K, kind="active", at=T0 + 2000, detail={"was": "warned", "idle_s": 2000.0}
        )
    ]
    assert state.phase is Phase.ACTIVE


# -- the warning comes first, and long enough before -------------------------------------------


def test_long_sampling_gap_warns_first_then_waits_the_lead() -> None:
    state, out = feed(fresh(), [(0, 0), (100_000, 0)])
    assert out == [
        Transition(kernel_id=K, kind="idle", at=T0 + 100_000, detail={"idle_s": 100_000.0}),
        Transition(
            kernel_id=K,
            kind="warned",
            at=T0 + 100_000,
            detail={
                "idle_s": 100_000.0,
                "reclaim_at": T0 + 101_800,
                "action": "release",
                "keeps_left": 3,
            },
        ),
    ]
    assert state.phase is Phase.WARNED
    assert state.warned_at == T0 + 100_000
    state, out = feed(state, [(101_799, 0)])
    assert out == []
    assert state.phase is Phase.WARNED
    state, out = feed(state, [(101_800, 0)])
    assert [(t.kind, t.at) for t in out] == [("reclaimed", T0 + 101_800)]
    assert out[0].detail == {"idle_s": 101_800.0, "action": "release"}


def test_late_warning_pushes_the_reclaim() -> None:
    # the warning comes at 2000 s (no reading in between): the reclaim waits until 3800 s
    state, out = feed(fresh(), [(0, 0), (2000, 0)])
    assert [t.kind for t in out] == ["idle", "warned"]
    assert out[1].detail["reclaim_at"] == T0 + 3800
    state, out = feed(state, [(3600, 0), (3799, 0)])
    assert out == []
    state, out = feed(state, [(3800, 0)])
    assert [(t.kind, t.at) for t in out] == [("reclaimed", T0 + 3800)]


def test_reclaim_never_on_the_warning_reading_even_with_no_lead_left() -> None:
    # reclaim_after just past warn_after: lead 1 s, but one reading far away must warn only
    policy = IdlePolicy(idle_after=10, warn_after=20, reclaim_after=21)
    state, out = feed(fresh(), [(0, 0), (10_000, 0)], policy)
    assert [t.kind for t in out] == ["idle", "warned"]
    state, out = feed(state, [(10_000.5, 0)], policy)
    assert out == []
    state, out = feed(state, [(10_001, 0)], policy)
    assert [t.kind for t in out] == ["reclaimed"]


def test_reclaim_waits_for_a_later_reading_even_with_zero_lead() -> None:
    # built directly (from_json would refuse it): no lead at all between warning and reclaim
    policy = IdlePolicy(idle_after=60, warn_after=120, reclaim_after=120)
    assert policy.lead == 0.0
    state, out = feed(fresh(), [(0, 0), (5000, 0)], policy)
    assert [t.kind for t in out] == ["idle", "warned"]
    assert out[1].detail["reclaim_at"] == T0 + 5000
    assert state.phase is Phase.WARNED
    state, out = feed(state, [(5000.25, 0)], policy)
    assert [(t.kind, t.at) for t in out] == [("reclaimed", T0 + 5000.25)]


def test_reclaimed_stays_reclaimed_while_idle() -> None:
    state = to_phase(Phase.RECLAIMED)
    state, out = feed(state, [(10_000, 2.0), (1_000_000, 0.0)])
    assert out == []
    assert state == IdleState(
        kernel_id=K,
        phase=Phase.RECLAIMED,
        idle_since=T0,
        warned_at=T0 + 1800,
        reclaimed_at=T0 + 3600,
        last_util=0.0,
        updated_at=T0 + 1_000_000,
    )


def test_notify_policy_still_reaches_reclaimed() -> None:
    policy = IdlePolicy(action=ReclaimAction.NOTIFY)
    state, out = feed(fresh(), [(0, 0), (600, 0), (1800, 0), (3600, 0)], policy)
    assert [t.kind for t in out] == ["idle", "warned", "reclaimed"]
    assert out[1].detail["action"] == "notify"
    assert out[2].detail == {"idle_s": 3600.0, "action": "notify"}
    assert state.phase is Phase.RECLAIMED


# -- keep --------------------------------------------------------------------------------------


def test_keep_when_warned() -> None:
    state = to_phase(Phase.WARNED)
    kept, t = keep(state, T0 + 2000, POLICY)
    assert t == Transition(
        kernel_id=K,
        kind="kept",
        at=T0 + 2000,
        detail={"hold_until": T0 + 5600, "keeps_left": 2},
    )
    assert kept == IdleState(
        kernel_id=K,
        phase=Phase.IDLE,
        idle_since=T0,
        warned_at=None,
        keeps=1,
        hold_until=T0 + 5600,
        last_util=0.0,
        updated_at=T0 + 2000,
    )
    # the next warning comes lead (1800 s) before the hold ends, the reclaim at its end
    assert kept.warn_at(POLICY) == T0 + 3800
    assert kept.reclaim_at(POLICY) == T0 + 5600
    state, out = feed(kept, [(3799, 0)])
    assert out == []
    assert state.phase is Phase.IDLE
    state, out = feed(state, [(3800, 0)])
    assert out == [
        Transition(
            kernel_id=K,
            kind="warned",
            at=T0 + 3800,
            detail={
                "idle_s": 3800.0,
                "reclaim_at": T0 + 5600,
                "action": "release",
                "keeps_left": 2,
            },
        )
    ]
    state, out = feed(state, [(5599, 0)])
    assert out == []
    state, out = feed(state, [(5600, 0)])
    assert [(t.kind, t.at) for t in out] == [("reclaimed", T0 + 5600)]
    assert state.keeps == 1


def test_keep_before_the_warning() -> None:
    state = to_phase(Phase.IDLE)
    kept, t = keep(state, T0 + 1000, POLICY)
    assert t.detail == {"hold_until": T0 + 4600, "keeps_left": 2}
    assert kept.phase is Phase.IDLE
    assert kept.warn_at(POLICY) == T0 + 2800
    assert kept.reclaim_at(POLICY) == T0 + 4600
    state, out = feed(kept, [(1800, 0), (2799, 0)])
    assert out == []
    state, out = feed(state, [(2800, 0)])
    assert [t.kind for t in out] == ["warned"]
    assert out[0].detail["reclaim_at"] == T0 + 4600


def test_short_keep_warns_again_but_keeps_the_lead() -> None:
    policy = IdlePolicy(keep_extension=600)
    state, _ = feed(fresh(), [(0, 0), (600, 0), (1800, 0)], policy)
    kept, t = keep(state, T0 + 2000, policy)
    assert t.detail == {"hold_until": T0 + 2600, "keeps_left": 2}
    # the warning is due again at once; the reclaim a full lead after that new warning
    state, out = feed(kept, [(2001, 0)], policy)
    assert [(x.kind, x.at) for x in out] == [("warned", T0 + 2001)]
    assert out[0].detail["reclaim_at"] == T0 + 3801
    state, out = feed(state, [(3600, 0), (3800, 0)], policy)
    assert out == []
    state, out = feed(state, [(3801, 0)], policy)
    assert [t.kind for t in out] == ["reclaimed"]


def test_keep_limit() -> None:
    state = to_phase(Phase.WARNED)
    lefts = []
    for i in range(3):
        state, t = keep(state, T0 + 2000 + i, POLICY)
        lefts.append(t.detail["keeps_left"])
    assert lefts == [2, 1, 0]
    assert state.keeps == 3
    assert state.hold_until == T0 + 2002 + 3600
    with pytest.raises(Conflict) as err:
        keep(state, T0 + 2010, POLICY)
    assert err.value.reason == "conflict"
    assert "kept 3 times" in str(err.value)
    # active again: the count starts again
    state, _ = observe(state, 90.0, T0 + 2020, POLICY)
    state, _ = feed(state, [(2100, 0), (2700, 0)])
    assert state.phase is Phase.IDLE
    state, t = keep(state, T0 + 2800, POLICY)
    assert t.detail["keeps_left"] == 2


def test_keep_limit_one() -> None:
    policy = IdlePolicy(max_keeps=1)
    state, _ = feed(fresh(), [(0, 0), (600, 0)], policy)
    state, t = keep(state, T0 + 700, policy)
    assert t.detail == {"hold_until": T0 + 4300, "keeps_left": 0}
    with pytest.raises(Conflict):
        keep(state, T0 + 800, policy)


@pytest.mark.parametrize(
    "state",
    [
        IdleState(kernel_id=K),
        IdleState(kernel_id=K, idle_since=T0, last_util=0.0, updated_at=T0 + 100),
        IdleState(
            kernel_id=K,
            phase=Phase.RECLAIMED,
            idle_since=T0,
            warned_at=T0 + 1800,
            reclaimed_at=T0 + 3600,
        ),
    ],
    ids=["fresh", "active-stretch", "reclaimed"],
)
def test_keep_refused_when_active_or_reclaimed(state: IdleState) -> None:
    with pytest.raises(Conflict):
        keep(state, T0 + 4000, POLICY)


@pytest.mark.parametrize("phase", [Phase.ACTIVE, Phase.IDLE, Phase.WARNED, Phase.RECLAIMED])
def test_keep_refused_when_exempt(phase: Phase) -> None:
    with pytest.raises(Conflict) as err:
        keep(to_phase(phase), T0 + 4000, None)
    assert "exempt" in str(err.value)


def test_keep_refused_messages() -> None:
    with pytest.raises(Conflict) as err:
        keep(to_phase(Phase.ACTIVE), T0 + 100, POLICY)
    assert "in use" in str(err.value)
    with pytest.raises(Conflict) as err:
        keep(to_phase(Phase.RECLAIMED), T0 + 4000, POLICY)
    assert "already reclaimed" in str(err.value)
