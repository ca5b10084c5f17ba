"""Utilisation coaching: why GPUs that are held are poorly used, read from a window of samples.

Three findings, each from telemetry alone:

- ``input_bound``: while a cell runs, the kernel's processes keep a CPU core pegged and the GPUs
  starve: the data pipeline cannot feed them;
- ``small_batch``: the GPUs are busy but their memory stays nearly empty: batches are likely too
  small to use the GPU well;
- ``idle_between_cells``: the GPUs mostly sit idle while no cell runs: they are held for
  thinking time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CoachingSample", "Hint", "Summary", "Thresholds", "hints", "summarise"]


@dataclass(frozen=True, kw_only=True)
class CoachingSample:
    at: float
    #: mean utilisation of the kernel's GPUs (%)
    gpu_util: float
    #: GPU memory the kernel uses, as a share of its GPUs' memory (0-1)
    memory_share: float
    #: CPU used by the kernel's process tree, in % of one core (200 = two cores)
    cpu_percent: float
    #: whether a cell was running; None when unknown
    executing: bool | None = None


@dataclass(frozen=True, kw_only=True)
class Hint:
    code: str
    message: str


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    #: GPUs under this mean utilisation (%) while working are starving
    starving_util: float = 40.0
    #: a process tree over this CPU (% of one core) is pegged
    pegged_cpu: float = 90.0
    #: GPUs over this utilisation (%) are busy
    busy_util: float = 5.0
    #: busy GPUs with less than this share of memory used run small batches
    small_memory_share: float = 0.10
    #: GPUs idle between cells for more than this share of the window are held for nothing
    idle_share: float = 0.5
    #: fewer samples than this say nothing
    min_samples: int = 3


@dataclass(frozen=True, kw_only=True)
class Summary:
    samples: int
    seconds: float
    gpu_util_mean: float
    gpu_util_max: float
    memory_share_max: float
    cpu_percent_mean: float
    busy_share: float


def summarise(samples: Sequence[CoachingSample], t: Thresholds | None = None) -> Summary:
    t = t or Thresholds()
    n = len(samples)
    if n == 0:
        return Summary(
            samples=0,
            seconds=0.0,
            gpu_util_mean=0.0,
            gpu_util_max=0.0,
            memory_share_max=0.0,
            cpu_percent_mean=0.0,
            busy_share=0.0,
        )
    return Summary(
        samples=n,
        seconds=samples[-1].at - samples[0].at,
        gpu_util_mean=sum(s.gpu_util for s in samples) / n,
        gpu_util_max=max(s.gpu_util for s in samples),
        memory_share_max=max(s.memory_share for s in samples),
        cpu_percent_mean=sum(s.cpu_percent for s in samples) / n,
        busy_share=sum(1 for s in samples if s.gpu_util >= t.busy_util) / n,
    )


def hints(samples: Sequence[CoachingSample], t: Thresholds | None = None) -> list[Hint]:
    """The findings a window of samples supports, most pressing first."""
    t = t or Thresholds()
    if len(samples) < t.min_samples:
        return []
    found: list[Hint] = []
    working = [s for s in samples if s.executing is not False]
    if len(working) >= t.min_samples:
        cpu = sum(s.cpu_percent for s in working) / len(working)
        util = sum(s.gpu_util for s in working) / len(working)
        if cpu >= t.pegged_cpu and util < t.starving_util:
            found.append(
                Hint(
                    code="input_bound",
                    message=f"Input-bound: the kernel's CPU is pegged ({cpu:.0f} % of a core) "
                    f"while its GPUs average {util:.0f} %. The data pipeline starves the GPUs: "
                    "use more DataLoader workers (num_workers), pin_memory=True, or move "
                    "preprocessing to the GPU.",
                )
            )
    busy = [s for s in samples if s.gpu_util >= t.busy_util]
    if len(busy) >= t.min_samples:
        share = max(s.memory_share for s in busy)
        if share < t.small_memory_share:
            found.append(
                Hint(
                    code="small_batch",
                    message=f"Batch too small: the GPUs are busy but use at most "
                    f"{share * 100:.0f} % of their memory. A larger batch size would use them "
                    "better.",
                )
            )
    between = [s for s in samples if s.executing is False]
    if between:
        idle = sum(1 for s in between if s.gpu_util < t.busy_util)
        share = idle / len(samples)
        if share > t.idle_share:
            found.append(
                Hint(
                    code="idle_between_cells",
                    message=f"GPUs idle between cells {share * 100:.0f} % of the time: release "
                    "them with %gpu release while you think, or submit long runs as jobs.",
                )
            )
    return found
