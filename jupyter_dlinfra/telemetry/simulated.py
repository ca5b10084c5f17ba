"""Made-up GPUs for machines without any: demos, development and tests.

Every reading is a pure function of (seed, GPU UUID, clock time), so two servers, or a test and
its expectation, see the same numbers at the same instant without sleeping or sharing state.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .base import GpuDevice, GpuSample, TelemetryProvider

__all__ = ["SimulatedProvider"]

# Fixed so that a node's simulated GPUs keep their UUIDs across restarts and releases.
_UUID_NAMESPACE = uuidlib.uuid5(uuidlib.NAMESPACE_DNS, "simulated-gpu.jupyter-dlinfra")

# Periods (seconds) of the walks: jobs start and stop over minutes, load wobbles over seconds.
_ACTIVITY_PERIOD = 900.0
_UTIL_PERIOD = 20.0
_MEMORY_PERIOD = 300.0
# Share of the time a simulated GPU sits idle, so demos show both idle and busy GPUs.
_IDLE_SHARE = 0.35


@dataclass(frozen=True)
class _Pin:
    utilization_percent: float
    memory_used_bytes: int | None


class SimulatedProvider(TelemetryProvider):
    """``count`` GPUs that exist only in memory; no GPU hardware or driver is touched."""

    name = "simulated"
    simulated = True

    def __init__(
        self,
        *,
        count: int,
        models: Sequence[str] = ("Simulated A100 80GB",),
        memory_bytes: int = 80 * 2**30,
        node: str,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
    ) -> None:
        if count < 0:
            raise ValueError(f"the number of simulated GPUs must be 0 or more, got {count}")
        if isinstance(models, str):
            # A bare string is a sequence of letters; one model name was surely meant.
            models = (models,)
        if not models or not all(m.strip() for m in models):
            raise ValueError(f"simulated GPU models must be non-empty names, got {list(models)}")
        if memory_bytes <= 0:
            raise ValueError(f"simulated GPU memory must be positive, got {memory_bytes} bytes")
        self._clock = clock
        self._seed = seed
        self._devices = [
            GpuDevice(
                uuid=f"GPU-{uuidlib.uuid5(_UUID_NAMESPACE, f'{node}/{index}')}",
                index=index,
                model=models[index % len(models)].strip(),
                memory_total_bytes=memory_bytes,
            )
            for index in range(count)
        ]
        self._by_uuid = {device.uuid: device for device in self._devices}
        self._pins: dict[str, _Pin] = {}
        # set_load comes from tests and demos on other threads than the sampling one.
        self._lock = threading.Lock()

    @property
    def reason(self) -> str:
        count = len(self._devices)
        return f"{count} simulated GPU{'' if count == 1 else 's'} (no GPU hardware is used)"

    def devices(self) -> list[GpuDevice]:
        return list(self._devices)

    def set_load(
        self, uuid: str, utilization_percent: float, memory_used_bytes: int | None = None
    ) -> None:
        """Pin a GPU's readings until ``clear_load``; memory left as None keeps simulating."""
        device = self._device(uuid)
        if not 0.0 <= utilization_percent <= 100.0:
            raise ValueError(f"utilisation must be within 0-100 %, got {utilization_percent}")
        if memory_used_bytes is not None and not (
            0 <= memory_used_bytes <= device.memory_total_bytes
        ):
            raise ValueError(
                f"memory used must be within 0-{device.memory_total_bytes} bytes, "
                f"got {memory_used_bytes}"
            )
        with self._lock:
            self._pins[uuid] = _Pin(float(utilization_percent), memory_used_bytes)

    def clear_load(self, uuid: str) -> None:
        """Let a pinned GPU follow the simulation again."""
        self._device(uuid)
        with self._lock:
            self._pins.pop(uuid, None)

    def sample(self) -> list[GpuSample]:
        now = self._clock()
        with self._lock:
            pins = dict(self._pins)
        readings = []
        for device in self._devices:
            utilization, memory = self._simulate(device, now)
            pin = pins.get(device.uuid)
            if pin is not None:
                utilization = pin.utilization_percent
                if pin.memory_used_bytes is not None:
                    memory = pin.memory_used_bytes
            readings.append(
                GpuSample(
                    uuid=device.uuid,
                    at=now,
                    utilization_percent=utilization,
                    memory_used_bytes=memory,
                    memory_total_bytes=device.memory_total_bytes,
                )
            )
        return readings

    def _device(self, uuid: str) -> GpuDevice:
        try:
            return self._by_uuid[uuid]
        except KeyError:
            raise ValueError(f"no simulated GPU has UUID {uuid!r}") from None

    def _simulate(self, device: GpuDevice, now: float) -> tuple[float, int]:
        activity = self._noise(device.uuid, "activity", now, _ACTIVITY_PERIOD)
        if activity < _IDLE_SHARE:
            # Idle: a driver context's few MiB and the odd percent of utilisation.
            utilization = 2.0 * self._noise(device.uuid, "util", now, _UTIL_PERIOD)
            memory_share = 0.005 * self._noise(device.uuid, "memory", now, _MEMORY_PERIOD)
        else:
            busy = (activity - _IDLE_SHARE) / (1.0 - _IDLE_SHARE)
            wobble = self._noise(device.uuid, "util", now, _UTIL_PERIOD)
            utilization = 30.0 + 40.0 * busy + 30.0 * wobble
            memory_share = 0.2 + 0.75 * self._noise(device.uuid, "memory", now, _MEMORY_PERIOD)
        utilization = min(100.0, max(0.0, utilization))
        memory = int(device.memory_total_bytes * min(1.0, max(0.0, memory_share)))
        return round(utilization, 1), memory

    def _noise(self, uuid: str, channel: str, now: float, period: float) -> float:
        """Value noise in [0, 1): random knots every ``period`` seconds, eased in between."""
        position = now / period
        knot = math.floor(position)
        ease = position - knot
        ease = ease * ease * (3.0 - 2.0 * ease)
        start = self._knot(uuid, channel, knot)
        return start + (self._knot(uuid, channel, knot + 1) - start) * ease

    def _knot(self, uuid: str, channel: str, knot: int) -> float:
        # A keyed hash rather than the random module: no global state, same value in every process.
        digest = hashlib.blake2b(
            f"{self._seed}|{uuid}|{channel}|{knot}".encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest, "big") / 2**64
