"""GPU telemetry from the NVIDIA driver through NVML (the ``pynvml`` module of nvidia-ml-py)."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from typing import Any

import psutil

from jupyter_dlinfra.telemetry.base import GpuDevice, GpuSample, ProcessUse, TelemetryProvider
from jupyter_dlinfra.telemetry.errors import TelemetryUnavailable

__all__ = ["NvmlProvider"]

log = logging.getLogger(__name__)

# NVML error codes (stable across driver versions) whose cause we can hint at in words.
_HINTS = {
    9: "no NVIDIA driver loaded on this machine?",  # NVML_ERROR_DRIVER_NOT_LOADED
    12: "no NVIDIA driver on this machine?",  # NVML_ERROR_LIBRARY_NOT_FOUND
    4: "no permission to the NVIDIA devices?",  # NVML_ERROR_NO_PERMISSION
}


def _text(value: bytes | str) -> str:
    # Older nvidia-ml-py releases return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else value


def _owner(pid: int) -> str | None:
    """Who runs ``pid``, for a GPU used outside the ledger; None where this cannot be told.

    NVML gives pids as the driver sees them: from a container, another PID namespace's pid may
    name no process here, or someone else's.
    """
    try:
        return str(psutil.Process(pid).username())
    except (psutil.Error, OSError, KeyError):
        # KeyError: a uid with no name in the password database
        return None


def _unavailable(error: Exception) -> TelemetryUnavailable:
    hint = _HINTS.get(getattr(error, "value", None) or -1)
    suffix = f" ({hint})" if hint else ""
    return TelemetryUnavailable(f"NVML is not available: {error}{suffix}")


class NvmlProvider(TelemetryProvider):
    """Reads the GPUs the NVIDIA driver sees.

    NVML keeps a reference count of ``nvmlInit`` calls, so the provider initialises once in the
    constructor and shuts down exactly once in ``close()``.
    """

    name = "nvml"
    simulated = False

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        try:
            # Imported here, not at module level, so the package imports on machines without it.
            self._nvml: Any = importlib.import_module("pynvml")
        except ImportError as exc:
            raise TelemetryUnavailable(
                "NVML is not available: the nvidia-ml-py package (module pynvml) is not installed"
            ) from exc
        self._clock = clock
        self._closed = False
        # GPUs whose last sampling failed; they are logged loudly once, then quietly.
        self._failing: set[int] = set()
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            raise _unavailable(exc) from exc
        try:
            self._driver = _text(self._nvml.nvmlSystemGetDriverVersion())
            count = int(self._nvml.nvmlDeviceGetCount())
        except self._nvml.NVMLError as exc:
            self.close()
            raise _unavailable(exc) from exc
        self._reason = f"NVML driver {self._driver} found {count} GPU{'' if count == 1 else 's'}"

    @property
    def reason(self) -> str:
        return self._reason

    def devices(self) -> list[GpuDevice]:
        if self._closed:
            return []
        nvml = self._nvml
        found = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            found.append(
                GpuDevice(
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    index=index,
                    model=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_total_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                )
            )
        return found

    def sample(self) -> list[GpuSample]:
        """One reading per GPU that answers.

        A GPU whose utilisation or memory cannot be read is left out rather than reported as
        zero: a made-up 0 % would look idle to the reclaimer. A GPU whose process list cannot be
        read is still reported, without processes.
        """
        if self._closed:
            return []
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
        except self._nvml.NVMLError:
            log.exception("NVML could not count the GPUs; no readings this interval")
            return []
        readings = []
        for index in range(count):
            reading = self._sample_one(index)
            if reading is not None:
                readings.append(reading)
        return readings

    def _sample_one(self, index: int) -> GpuSample | None:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            utilization = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except nvml.NVMLError as exc:
            self._report(index, f"GPU {index} gave no reading ({exc}); leaving it out")
            return None
        try:
            processes = self._processes(handle)
        except nvml.NVMLError as exc:
            self._report(index, f"GPU {index} ({uuid}) gave no process list ({exc})")
            processes = ()
        else:
            if index in self._failing:
                log.info("GPU %d (%s) answers NVML again", index, uuid)
                self._failing.discard(index)
        return GpuSample(
            uuid=uuid,
            at=self._clock(),
            utilization_percent=utilization,
            memory_used_bytes=int(memory.used),
            memory_total_bytes=int(memory.total),
            processes=processes,
        )

    def _processes(self, handle: Any) -> tuple[ProcessUse, ...]:
        # A process that both computes and draws shows in both lists; count it once, keeping the
        # larger figure since both report the same allocation.
        used: dict[int, int] = {}
        computing: set[int] = set()
        for listing, compute in (
            (self._nvml.nvmlDeviceGetComputeRunningProcesses, True),
            (self._nvml.nvmlDeviceGetGraphicsRunningProcesses, False),
        ):
            for proc in listing(handle):
                memory = int(proc.usedGpuMemory or 0)  # None where the driver cannot tell
                used[int(proc.pid)] = max(used.get(int(proc.pid), 0), memory)
                if compute:
                    computing.add(int(proc.pid))
        return tuple(
            ProcessUse(
                pid=pid, memory_used_bytes=used[pid], user=_owner(pid), compute=pid in computing
            )
            for pid in sorted(used)
        )

    def _report(self, index: int, message: str) -> None:
        # Sampling runs every few seconds; a GPU that fell off the bus would flood the log.
        if index in self._failing:
            log.debug(message)
        else:
            log.warning(message)
            self._failing.add(index)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            log.exception("NVML shutdown failed")
