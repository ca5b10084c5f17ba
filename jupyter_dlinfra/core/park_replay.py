"""What parking idle kernels would have done to recorded utilisation, and what users waited for it.

Parking copies a kernel's GPU memory to host memory (CUDA checkpointing), hands its GPUs back to
the pool and keeps the process alive with all its variables; the next CUDA call waits for the copy
back (a *resume*) and carries on. Nothing is lost, so a park is never false: its price is the wait
of the cell that comes back, and the copies.

A series is read as :mod:`.replay` reads it: one kernel holding ``gpus`` GPUs, ``(time, highest
utilisation %)`` points, each standing for the time until the next but never more than
``max_gap`` seconds. A point under ``idle_util_percent`` is idle, as the other rules count it.
A point is *quiet* when the kernel runs nothing on its GPUs: with ``any_use`` (the default) only
a reading of 0 %, since a parked process can run nothing on its GPUs and any use wakes it; without
it, any idle point (light use under the threshold is then assumed to need no GPU, which flatters
parking).

* The park starts ``park_after`` seconds into a run of quiet points, counted from the first of
  them, inside the point that covers that instant (at the next quiet point when it falls in a hole
  of the recording). The GPUs are free only once the copy out is done, ``park.seconds(gib)`` later.
* The first point after a park that is not quiet resumes the kernel at its instant: its cell waits
  for the rest of the copy out, if any, then for the copy back, ``resume.seconds(gib)``. The GPUs
  are the kernel's again from that instant; the next park needs a new run of quiet points.
* Recovered: idle time during which the GPUs are free.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from jupyter_dlinfra.core.replay import KernelOutcome, ReplayReport, UsageSeries

__all__ = [
    "PUBLISHED_COPY",
    "CopyModel",
    "MeasuredError",
    "ParkReport",
    "UserCost",
    "fit_copy_model",
    "nearest_rank",
    "read_measured",
    "replay_parks",
]

#: ``park_s_8``, ``resume_s_0p5`` (0.5 GiB: a key cannot hold a dot)
_MEASURED_KEY = re.compile(r"(park|resume)_s_(\d+(?:[.p]\d+)?)")


class MeasuredError(ValueError):
    """Measured copy times that no model can be fitted to."""


@dataclass(frozen=True, kw_only=True)
class CopyModel:
    """Seconds to copy a kernel's GPU memory one way: ``fixed_s + gib / gib_per_s``."""

    fixed_s: float
    #: ``math.inf`` when the size costs nothing
    gib_per_s: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.fixed_s):
            raise ValueError(f"fixed_s must be finite, not {self.fixed_s!r}")
        if not self.gib_per_s > 0:
            raise ValueError(f"gib_per_s must be more than 0, not {self.gib_per_s!r}")

    def seconds(self, gib: float) -> float:
        # a fit through noisy measurements can cross zero for tiny kernels; no copy is negative
        return max(0.0, self.fixed_s + gib / self.gib_per_s)

    @classmethod
    def parse(cls, text: str) -> CopyModel:
        """``"a,bw"``: seconds whatever the size, and GiB per second."""
        parts = text.split(",")
        if len(parts) != 2:
            raise ValueError(f"expected A,BANDWIDTH (seconds, GiB/s), not {text!r}")
        try:
            fixed_s, gib_per_s = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"expected two numbers, A,BANDWIDTH, not {text!r}") from None
        if fixed_s < 0:
            raise ValueError(f"the fixed time must be 0 or more, not {text!r}")
        return cls(fixed_s=fixed_s, gib_per_s=gib_per_s)

    def __str__(self) -> str:
        return f"{self.fixed_s:g} s + GiB / {self.gib_per_s:g} GiB/s"


#: Until measured on our hardware: published CUDA checkpoint figures run from about a second for
#: small processes to about 15 s for tens of GiB. 0.5 s plus host copies at 5.5 GiB/s gives 0.7 s
#: at 1 GiB, 2.3 s at 10 GiB and 15 s at 80 GiB (a whole H100). Used both ways: the copy out and
#: the copy back cross the same PCIe link.
PUBLISHED_COPY = CopyModel(fixed_s=0.5, gib_per_s=5.5)


def fit_copy_model(points: Mapping[float, float]) -> CopyModel:
    """Least squares of ``seconds = a + gib / bandwidth`` over ``{gib: seconds}``."""
    if len(points) < 2:
        raise MeasuredError(f"a fit needs two sizes or more, not {len(points)}")
    n = len(points)
    mean_x = sum(points) / n
    mean_y = sum(points.values()) / n
    sxx = sum((x - mean_x) ** 2 for x in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points.items())
    slope = sxy / sxx
    if slope < 0:
        raise MeasuredError(
            f"the measured times shrink as the size grows ({slope:.3g} s/GiB): no bandwidth fits"
        )
    return CopyModel(
        fixed_s=mean_y - slope * mean_x, gib_per_s=1.0 / slope if slope > 0 else math.inf
    )


def read_measured(text: str) -> tuple[CopyModel, CopyModel]:
    """The (park, resume) models fitted to the last ``RESULT`` line of a measurement's output.

    The line holds ``park_s_<GiB>=seconds`` and ``resume_s_<GiB>=seconds`` among other keys
    (``benchmarks/park_resume.py`` writes ``0p5`` for 0.5 GiB, and ``skip`` for a size it could
    not run, which is left out). With no ``park_s_`` figure, the resume model serves for parks.
    """
    lines = [line for line in text.splitlines() if line.startswith("RESULT")]
    if not lines:
        raise MeasuredError("no line starts with RESULT")
    found: dict[str, dict[float, float]] = {"park": {}, "resume": {}}
    for pair in lines[-1].split()[1:]:
        key, sep, value = pair.partition("=")
        match = _MEASURED_KEY.fullmatch(key)
        if not sep or match is None or value == "skip":
            continue
        try:
            seconds = float(value)
        except ValueError:
            raise MeasuredError(f"{key}: not a number of seconds: {value!r}") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise MeasuredError(f"{key}: not a number of seconds: {value!r}")
        found[match[1]][float(match[2].replace("p", "."))] = seconds
    if not found["resume"]:
        raise MeasuredError("the RESULT line has no resume_s_<GiB> key")
    resume = fit_copy_model(found["resume"])
    park = fit_copy_model(found["park"]) if found["park"] else resume
    return park, resume


def nearest_rank(values: Sequence[float], pct: float) -> float:
    """The smallest value with at least ``pct`` % of the values at or below it; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1])


@dataclass(frozen=True, kw_only=True)
class UserCost:
    """What a rule cost the kernels' users."""

    #: kernel restarts or shutdowns that lost the kernel's variables
    state_lost: int
    #: seconds the first cell waited each time a kernel came back after a park or a loss
    waits: tuple[float, ...]
    kernel_days: float

    @property
    def returns(self) -> int:
        return len(self.waits)

    @property
    def returns_per_kernel_day(self) -> float:
        return self.returns / self.kernel_days if self.kernel_days else 0.0

    def wait_at(self, pct: float) -> float:
        return nearest_rank(self.waits, pct)


@dataclass(frozen=True, kw_only=True)
class ParkReport:
    #: reclaims are parks; parks are never false, and nobody is warned
    replay: ReplayReport
    #: returns are resumes; no state is lost
    cost: UserCost


def replay_parks(
    series: Iterable[UsageSeries],
    *,
    park_after: float,
    idle_util_percent: float,
    kernel_gib: float,
    park: CopyModel = PUBLISHED_COPY,
    resume: CopyModel = PUBLISHED_COPY,
    any_use: bool = True,
    max_gap: float = 300.0,
) -> ParkReport:
    """Park every series as the module says; every kernel holds ``kernel_gib`` on its GPUs."""
    if park_after < 0 or kernel_gib < 0:
        raise ValueError("park_after and kernel_gib must be 0 or more")
    park_s, resume_s = park.seconds(kernel_gib), resume.seconds(kernel_gib)
    kernels: list[KernelOutcome] = []
    waits: list[float] = []
    held_gpu_s = span_s = 0.0
    for one in series:
        outcome, kernel_waits, kernel_span = _park_one(
            one, park_after, idle_util_percent, park_s, resume_s, any_use, max_gap
        )
        kernels.append(outcome)
        waits.extend(kernel_waits)
        span_s += kernel_span
        held_gpu_s += kernel_span * one.gpus
    kernel_days = span_s / 86400.0
    report = ReplayReport(
        held_gpu_hours=held_gpu_s / 3600.0,
        idle_gpu_hours=sum(k.idle_gpu_hours for k in kernels),
        recovered_gpu_hours=sum(k.recovered_gpu_hours for k in kernels),
        warnings=0,
        reclaims=sum(k.reclaims for k in kernels),
        false_reclaims=0,
        kernel_days=kernel_days,
        kernels=tuple(kernels),
    )
    return ParkReport(
        replay=report, cost=UserCost(state_lost=0, waits=tuple(waits), kernel_days=kernel_days)
    )


def _park_one(
    one: UsageSeries,
    park_after: float,
    idle_util_percent: float,
    park_s: float,
    resume_s: float,
    any_use: bool,
    max_gap: float,
) -> tuple[KernelOutcome, list[float], float]:
    points = list(one.points)
    parks = 0
    waits: list[float] = []
    idle_s = recovered_s = span_s = 0.0
    quiet_since: float | None = None
    # while parked: when the copy out is done and the GPUs are free
    free_from: float | None = None
    for i, (at, util) in enumerate(points):
        step = max(0.0, min(points[i + 1][0] - at, max_gap)) if i + 1 < len(points) else 0.0
        span_s += step
        idle = util < idle_util_percent
        quiet = util <= 0 if any_use else idle
        if idle:
            idle_s += step
        if not quiet:
            quiet_since = None
            if free_from is not None:
                waits.append(max(0.0, free_from - at) + resume_s)
                free_from = None
            continue
        if free_from is None:
            if quiet_since is None:
                quiet_since = at
            start = max(at, quiet_since + park_after)
            if start >= at + step:
                continue
            parks += 1
            free_from = start + park_s
        if idle:
            recovered_s += max(0.0, at + step - max(at, free_from))
    hours = one.gpus / 3600.0
    outcome = KernelOutcome(
        kernel_id=one.kernel_id,
        user=one.user,
        path=one.path,
        gpus=one.gpus,
        warnings=0,
        reclaims=parks,
        false_reclaims=0,
        recovered_gpu_hours=recovered_s * hours,
        idle_gpu_hours=idle_s * hours,
    )
    return outcome, waits, span_s
