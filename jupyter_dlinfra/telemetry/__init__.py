"""GPU telemetry: where the inventory and live readings come from, and choosing that source."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jupyter_dlinfra.telemetry.base import GpuDevice, GpuSample, ProcessUse, TelemetryProvider
from jupyter_dlinfra.telemetry.errors import TelemetryUnavailable
from jupyter_dlinfra.telemetry.nvml import NvmlProvider
from jupyter_dlinfra.telemetry.simulated import SimulatedProvider
from jupyter_dlinfra.telemetry.unavailable import UnavailableProvider

__all__ = [
    "SIMULATED_GPUS_ENV",
    "SIMULATED_LOAD_FILE_ENV",
    "SIMULATED_MODELS_ENV",
    "GpuDevice",
    "GpuSample",
    "NvmlProvider",
    "ProcessUse",
    "SimulatedProvider",
    "TelemetryProvider",
    "TelemetryUnavailable",
    "UnavailableProvider",
    "select_provider",
    "simulated_gpus_from_env",
    "simulated_models_from_env",
]

log = logging.getLogger(__name__)

SIMULATED_GPUS_ENV = "DLINFRA_SIMULATED_GPUS"
SIMULATED_MODELS_ENV = "DLINFRA_SIMULATED_GPU_MODELS"
SIMULATED_LOAD_FILE_ENV = "DLINFRA_SIMULATED_LOAD_FILE"


def select_provider(
    *,
    simulated_gpus: int,
    simulated_models: Sequence[str],
    node: str,
    clock: Callable[[], float] = time.time,
    simulated_load_file: str | None = None,
) -> TelemetryProvider:
    """Simulated GPUs when asked for, else the real ones, else a provider that explains why not.

    Never raises for a missing driver: a server without GPUs must still start and say so.
    An empty ``simulated_models`` means "not configured" and takes the simulator's default.
    """
    if simulated_gpus < 0:
        raise ValueError(f"simulated_gpus must be 0 or more, got {simulated_gpus}")
    provider: TelemetryProvider
    if simulated_gpus > 0:
        extra: dict[str, Any] = {"load_file": simulated_load_file}
        if simulated_models:
            extra["models"] = simulated_models
        provider = SimulatedProvider(count=simulated_gpus, node=node, clock=clock, **extra)
    else:
        try:
            provider = NvmlProvider(clock=clock)
        except TelemetryUnavailable as exc:
            provider = UnavailableProvider(
                f"{exc}. Set c.DLInfra.simulated_gpus = 8 or {SIMULATED_GPUS_ENV}=8 "
                "to run on simulated GPUs."
            )
    log.info("GPU telemetry: %s (%s)", provider.name, provider.reason)
    return provider


def simulated_gpus_from_env(environ: Mapping[str, str]) -> int | None:
    """The GPU count ``DLINFRA_SIMULATED_GPUS`` asks for; None when it is unset or blank."""
    raw = environ.get(SIMULATED_GPUS_ENV, "").strip()
    if not raw:
        return None
    try:
        count = int(raw)
    except ValueError:
        count = -1
    if count < 0:
        raise ValueError(
            f"{SIMULATED_GPUS_ENV} must be a whole number of GPUs, 0 or more; got {raw!r}"
        )
    return count


def simulated_models_from_env(environ: Mapping[str, str]) -> list[str] | None:
    """The model names in ``DLINFRA_SIMULATED_GPU_MODELS`` (comma-separated); None when unset."""
    names = [name.strip() for name in environ.get(SIMULATED_MODELS_ENV, "").split(",")]
    names = [name for name in names if name]
    return names or None
