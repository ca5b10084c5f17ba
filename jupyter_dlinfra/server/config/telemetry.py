"""Options of GPU telemetry: sampling, and the simulated GPUs of machines without any."""

from __future__ import annotations

import os
from typing import Any

from traitlets import Float, HasTraits, Int, List, TraitError, Unicode, default, validate

from jupyter_dlinfra.server.config.lists import read_list_literal
from jupyter_dlinfra.telemetry import (
    SIMULATED_LOAD_FILE_ENV,
    simulated_gpus_from_env,
    simulated_models_from_env,
)

__all__ = ["TelemetryOptions"]


class TelemetryOptions(HasTraits):
    simulated_gpus = Int(
        config=True,
        help="Number of simulated GPUs for machines without any (demo, tests). 0 disables "
        "simulation and reads real GPUs through NVML. Simulated GPUs are labelled simulated in "
        "every API answer. Environment: DLINFRA_SIMULATED_GPUS.",
    )
    simulated_gpu_models = List(
        Unicode(),
        config=True,
        help="Model names given to simulated GPUs in turn (GPU i gets models[i % len]); empty: "
        "one default model. Only used when simulated_gpus > 0. "
        "Environment: DLINFRA_SIMULATED_GPU_MODELS (comma-separated).",
    )
    simulated_load_file = Unicode(
        config=True,
        help="JSON file that pins simulated GPUs' readings, re-read whenever it changes: "
        '{"0": {"utilization_percent": 0, "memory_used_bytes": 0, "processes": {"PID": '
        "BYTES}}} (keys: GPU index or UUID). Lets a demo or test make GPUs idle or busy. Empty: "
        "no file. Only used with simulated_gpus > 0. Environment: DLINFRA_SIMULATED_LOAD_FILE.",
    )
    telemetry_interval = Float(
        2.0,
        config=True,
        help="Seconds between two GPU telemetry samples (one sample serves every client). "
        "0 disables periodic sampling.",
    )

    @default("simulated_gpus")
    def _default_simulated_gpus(self) -> int:
        return simulated_gpus_from_env(os.environ) or 0

    @default("simulated_gpu_models")
    def _default_simulated_models(self) -> list[str]:
        return simulated_models_from_env(os.environ) or []

    @default("simulated_load_file")
    def _default_simulated_load_file(self) -> str:
        return os.environ.get(SIMULATED_LOAD_FILE_ENV, "")

    @validate("simulated_gpus")
    def _check_simulated_gpus(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if value < 0:
            raise TraitError(f"DLInfra.simulated_gpus must be 0 or more, not {value}")
        return value

    @validate("simulated_gpu_models")
    def _read_models(self, proposal: dict[str, Any]) -> list[str]:
        return read_list_literal(proposal)
