"""Made-up GPUs for machines without any: demos, development and tests.

A GPU that the ledger holds (the server says which, ``note_held``) works as a kernel's would:
busy for stretches of minutes, idle in between. One that nobody holds is free: 0 %, no memory
in use, as a real one would read.

Readings can be pinned per GPU, from code (``set_load``) or from a JSON load file that the
provider re-reads whenever it changes (``DLINFRA_SIMULATED_LOAD_FILE``), so that a demo or a test
can make a GPU idle or busy in a running server, or show someone's process on a GPU that the
ledger says is free (a "foreign" process: in use outside the ledger)::

    {"0": {"utilization_percent": 0},
     "GPU-...": {"utilization_percent": 85, "memory_used_bytes": 2147483648,
                 "processes": {"4242": 2147483648}, "users": {"4242": "mallory"}}}

Keys are GPU indexes or UUIDs; ``processes`` maps pids to the memory each holds, ``users``
(optional) pids to their owners.

Every reading is a pure function of (seed, GPU UUID, clock time, held or not), so two servers,
or a test and its expectation, see the same numbers at the same instant without sleeping or
sharing state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jupyter_dlinfra.telemetry.base import GpuDevice, GpuSample, ProcessUse, TelemetryProvider

__all__ = ["SimulatedProvider"]

log = logging.getLogger(__name__)

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
    processes: tuple[ProcessUse, ...] = ()


class SimulatedProvider(TelemetryProvider):
    """``count`` GPUs that exist only in memory; no GPU hardware or driver is touched."""

    name = "simulated"
    simulated = True
    follows_ledger = True

    def __init__(
        self,
        *,
        count: int,
        models: Sequence[str] = ("Simulated A100 80GB",),
        memory_bytes: int = 80 * 2**30,
        node: str,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
        load_file: str | None = None,
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
        self._load_file = Path(load_file) if load_file else None
        self._load_stamp: tuple[int, int, int] | None = None
        self._file_pins: dict[str, _Pin] = {}
        self._held: frozenset[str] = frozenset()

    @property
    def reason(self) -> str:
        count = len(self._devices)
        return f"{count} simulated GPU{'' if count == 1 else 's'} (no GPU hardware is used)"

    def devices(self) -> list[GpuDevice]:
        return list(self._devices)

    def note_held(self, uuids: Collection[str]) -> None:
        held = frozenset(uuids)
        with self._lock:
            self._held = held

    def set_load(
        self,
        uuid: str,
        utilization_percent: float,
        memory_used_bytes: int | None = None,
        processes: Mapping[int, int] | None = None,
        users: Mapping[int, str] | None = None,
    ) -> None:
        """Pin a GPU's readings until ``clear_load``; memory left as None keeps simulating (and
        counts at least what the listed processes hold).

        ``processes`` maps pids to the GPU memory (bytes) each holds, as NVML would list them;
        ``users`` pids to their owners, as the NVML provider tells them.
        """
        pin = self._pin(uuid, utilization_percent, memory_used_bytes, processes, users)
        with self._lock:
            self._pins[uuid] = pin

    def _pin(
        self,
        uuid: str,
        utilization_percent: float,
        memory_used_bytes: int | None,
        processes: Mapping[int, int] | None,
        users: Mapping[int, str] | None = None,
    ) -> _Pin:
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
        owners = {int(pid): str(user) for pid, user in (users or {}).items()}
        uses = tuple(
            ProcessUse(pid=int(pid), memory_used_bytes=int(used), user=owners.get(int(pid)))
            for pid, used in sorted((processes or {}).items())
        )
        if any(u.memory_used_bytes < 0 for u in uses):
            raise ValueError("process memory must be 0 bytes or more")
        if set(owners) - {u.pid for u in uses}:
            raise ValueError("users name the owners of listed processes only")
        return _Pin(float(utilization_percent), memory_used_bytes, uses)

    def _read_load_file(self) -> dict[str, _Pin]:
        """Pins from the load file, re-read when it changes; a broken file keeps the last ones."""
        path = self._load_file
        if path is None:
            return {}
        try:
            info = path.stat()
        except OSError:
            self._load_stamp, self._file_pins = None, {}
            return {}
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        if stamp == self._load_stamp:
            return self._file_pins
        try:
            doc = json.loads(path.read_text(encoding="utf-8") or "{}")
            if not isinstance(doc, dict):
                raise ValueError("the file must hold a JSON object")
            pins = {}
            for key, entry in doc.items():
                device = self._resolve(str(key))
                pins[device.uuid] = self._pin(
                    device.uuid,
                    float(entry["utilization_percent"]),
                    entry.get("memory_used_bytes"),
                    {int(p): int(m) for p, m in (entry.get("processes") or {}).items()},
                    {int(p): str(u) for p, u in (entry.get("users") or {}).items()},
                )
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            log.warning("simulated GPU load file %s ignored: %s", path, err)
            self._load_stamp = stamp
            return self._file_pins
        self._load_stamp, self._file_pins = stamp, pins
        return pins

    def _resolve(self, key: str) -> GpuDevice:
        if key.isdigit() and int(key) < len(self._devices):
            return self._devices[int(key)]
        return self._device(key)

    def clear_load(self, uuid: str) -> None:
        """Let a pinned GPU follow the simulation again."""
        self._device(uuid)
        with self._lock:
            self._pins.pop(uuid, None)

    def sample(self) -> list[GpuSample]:
        now = self._clock()
        pins = dict(self._read_load_file())
        with self._lock:
            pins.update(self._pins)
            held = self._held
        readings = []
        for device in self._devices:
            # nobody's work runs on a GPU the ledger does not hold (unless pinned so)
            utilization, memory = self._simulate(device, now) if device.uuid in held else (0.0, 0)
            pin = pins.get(device.uuid)
            processes: tuple[ProcessUse, ...] = ()
            if pin is not None:
                utilization = pin.utilization_percent
                processes = pin.processes
                if pin.memory_used_bytes is not None:
                    memory = pin.memory_used_bytes
                else:
                    # the memory its listed processes hold is in use, at least
                    held_by_processes = sum(p.memory_used_bytes for p in processes)
                    memory = min(device.memory_total_bytes, max(memory, held_by_processes))
            readings.append(
                GpuSample(
                    uuid=device.uuid,
                    at=now,
                    utilization_percent=utilization,
                    memory_used_bytes=memory,
                    memory_total_bytes=device.memory_total_bytes,
                    processes=processes,
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
