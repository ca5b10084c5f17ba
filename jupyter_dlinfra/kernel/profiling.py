"""``%gpu profile``: sample this kernel's GPUs and processes through the server, then explain.

The server samples telemetry once per interval; the profiler polls the kernel's latest reading
and keeps each new one, so it costs the GPUs nothing. The findings come from the same rules as
the sidebar's hints (:mod:`jupyter_dlinfra.kernel.coaching`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from jupyter_dlinfra.kernel.client import ApiFailure, DLInfraUnavailable, KernelApiClient
from jupyter_dlinfra.kernel.coaching import CoachingSample, hints, summarise

__all__ = ["Profiler"]

POLL_S = 0.5


def _sample(usage: dict[str, Any]) -> CoachingSample | None:
    at = usage.get("at_epoch")
    if not isinstance(at, (int, float)) or not usage.get("held"):
        return None
    return CoachingSample(
        at=float(at),
        gpu_util=float(usage.get("gpu_util_mean") or 0.0),
        memory_share=float(usage.get("memory_share") or 0.0),
        cpu_percent=float(usage.get("cpu_percent") or 0.0),
        # the profiled code is running, whatever the kernel's state says about this cell
        executing=True,
    )


class Profiler:
    def __init__(self, client: KernelApiClient, *, poll: float = POLL_S) -> None:
        self.client = client
        self.poll = poll
        self.samples: dict[float, CoachingSample] = {}
        self.gpus: list[dict[str, Any]] = []
        self.simulated = False
        self.errors = 0

    def holds_gpus(self) -> bool:
        usage = self.client.usage()
        self._note(usage)
        return bool(usage.get("held"))

    def _note(self, usage: dict[str, Any]) -> None:
        held = [g for g in usage.get("gpus") or [] if g.get("held")]
        if held:
            self.gpus = held
        self.simulated = bool(usage.get("simulated"))

    def poll_once(self) -> None:
        try:
            usage = self.client.usage()
        except (DLInfraUnavailable, ApiFailure):
            self.errors += 1
            return
        self._note(usage)
        sample = _sample(usage)
        if sample is not None:
            self.samples.setdefault(sample.at, sample)

    def sample_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            self.poll_once()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(self.poll, left))

    @contextlib.contextmanager
    def in_background(self) -> Iterator[None]:
        """Sample on a thread while the body runs (``%%gpu profile``)."""
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                self.poll_once()
                stop.wait(self.poll)

        thread = threading.Thread(target=run, name="gpu-profile", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.poll_once()

    def report(self) -> str:
        ordered = [self.samples[k] for k in sorted(self.samples)]
        summary = summarise(ordered)
        label = " (simulated)" if self.simulated else ""
        total = sum(int(g.get("memory_total_bytes") or 0) for g in self.gpus)
        lines = [
            f"GPU profile of this kernel's {len(self.gpus)} GPU(s){label}: "
            f"{summary.samples} samples over {summary.seconds:.0f} s"
        ]
        if summary.samples == 0:
            lines.append(
                "  no reading arrived: the server samples telemetry every few seconds; "
                "profile for longer"
            )
            return "\n".join(lines)
        lines += [
            f"  GPU utilisation: mean {summary.gpu_util_mean:.0f} %, "
            f"max {summary.gpu_util_max:.0f} %",
            f"  GPU memory: at most {summary.memory_share_max * 100:.0f} % of "
            f"{total / 2**30:.1f} GiB",
            f"  CPU of the kernel and its child processes: mean "
            f"{summary.cpu_percent_mean:.0f} % of a core",
        ]
        found = hints(ordered)
        if found:
            lines.append("Findings:")
            lines += [f"  - {h.message}" for h in found]
        else:
            lines.append("No finding: nothing in these samples points at a waste of the GPUs.")
        return "\n".join(lines)
