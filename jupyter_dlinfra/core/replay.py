"""What a reclaim policy would have done to recorded utilisation: the dry run and the benchmark.

Each series is one kernel holding ``gpus`` GPUs, read as (time, highest utilisation of its GPUs)
points. The series runs through the real state machine of :mod:`.idle`. After a reclaim the kernel
holds nothing, so every second until its GPUs are busy again is recovered; when they are busy
again, the kernel's user asks for GPUs again (``%gpu``) and holds them from then on. A reclaim is
*false* when the GPUs were busy again within ``false_window`` seconds of it: someone lost GPUs they
were about to use.

A point stands for the time until the next one, but never more than ``max_gap`` seconds: a hole in
the recording is neither idle nor busy time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from jupyter_dlinfra.core.idle import IdlePolicy, IdleState, Phase, ReclaimPolicy, observe

__all__ = ["KernelOutcome", "ReplayReport", "UsageSeries", "replay"]


@dataclass(frozen=True, kw_only=True)
class UsageSeries:
    kernel_id: str
    user: str = ""
    gpus: int = 1
    #: (seconds since the epoch, highest utilisation among the kernel's GPUs in %), in time order
    points: Sequence[tuple[float, float]]
    path: str | None = None


@dataclass(frozen=True, kw_only=True)
class KernelOutcome:
    kernel_id: str
    user: str
    path: str | None
    gpus: int
    warnings: int
    reclaims: int
    false_reclaims: int
    recovered_gpu_hours: float
    idle_gpu_hours: float


@dataclass(frozen=True, kw_only=True)
class ReplayReport:
    #: GPU-hours the kernels held with no policy: the length of their series
    held_gpu_hours: float
    idle_gpu_hours: float
    recovered_gpu_hours: float
    warnings: int
    reclaims: int
    false_reclaims: int
    kernel_days: float
    kernels: tuple[KernelOutcome, ...] = field(default=())

    @property
    def recovered_pct(self) -> float:
        return (
            100.0 * self.recovered_gpu_hours / self.idle_gpu_hours if self.idle_gpu_hours else 0.0
        )

    @property
    def false_reclaim_pct(self) -> float:
        return 100.0 * self.false_reclaims / self.reclaims if self.reclaims else 0.0

    @property
    def warnings_per_kernel_day(self) -> float:
        return self.warnings / self.kernel_days if self.kernel_days else 0.0


def replay(
    series: Iterable[UsageSeries],
    policy: ReclaimPolicy | IdlePolicy,
    *,
    groups_of: Callable[[str], Iterable[str]] = lambda user: (),
    false_window: float | None = None,
    max_gap: float = 300.0,
) -> ReplayReport:
    """Run every series through the state machine; ``false_window`` defaults to reclaim_after."""
    outcomes = []
    for one in series:
        if isinstance(policy, ReclaimPolicy):
            applied = policy.for_user(one.user, groups_of(one.user))
            # an exempt user's idle GPUs are still idle: they count toward the limit
            threshold = (applied or policy.default).idle_util_percent
        else:
            applied, threshold = policy, policy.idle_util_percent
        outcomes.append(_replay_one(one, applied, threshold, false_window, max_gap))
    held = sum(o[1] for o in outcomes)
    kernels = tuple(o[0] for o in outcomes)
    return ReplayReport(
        held_gpu_hours=held,
        idle_gpu_hours=sum(k.idle_gpu_hours for k in kernels),
        recovered_gpu_hours=sum(k.recovered_gpu_hours for k in kernels),
        warnings=sum(k.warnings for k in kernels),
        reclaims=sum(k.reclaims for k in kernels),
        false_reclaims=sum(k.false_reclaims for k in kernels),
        kernel_days=sum(o[2] for o in outcomes) / 86400.0,
        kernels=kernels,
    )


def _replay_one(
    one: UsageSeries,
    policy: IdlePolicy | None,
    threshold: float,
    false_window: float | None,
    max_gap: float,
) -> tuple[KernelOutcome, float, float]:
    points = list(one.points)
    window = false_window
    if window is None:
        window = policy.reclaim_after if policy is not None else 0.0
    state = IdleState(kernel_id=one.kernel_id)
    warnings = reclaims = false_reclaims = 0
    idle_s = recovered_s = span_s = 0.0
    reclaimed_at: float | None = None
    for i, (at, util) in enumerate(points):
        step = min(points[i + 1][0] - at, max_gap) if i + 1 < len(points) else 0.0
        step = max(0.0, step)
        span_s += step
        idle = util < threshold
        if reclaimed_at is not None:
            if idle:
                recovered_s += step
                idle_s += step
                continue
            # busy again: the user asks for GPUs once more and holds them from now on
            if at - reclaimed_at <= window:
                false_reclaims += 1
            reclaimed_at = None
            state = IdleState(kernel_id=one.kernel_id)
        if idle:
            idle_s += step
        state, transitions = observe(state, util, at, policy)
        for t in transitions:
            if t.kind == Phase.WARNED.value:
                warnings += 1
            elif t.kind == Phase.RECLAIMED.value:
                reclaims += 1
                reclaimed_at = at
                # the rest of this step is already free
                recovered_s += step
    hours = one.gpus / 3600.0
    outcome = KernelOutcome(
        kernel_id=one.kernel_id,
        user=one.user,
        path=one.path,
        gpus=one.gpus,
        warnings=warnings,
        reclaims=reclaims,
        false_reclaims=false_reclaims,
        recovered_gpu_hours=recovered_s * hours,
        idle_gpu_hours=idle_s * hours,
    )
    return outcome, span_s * hours, span_s
