"""The provider used when no GPU telemetry can be had: it reports nothing and says why."""

from __future__ import annotations

from jupyter_dlinfra.telemetry.base import GpuDevice, GpuSample, TelemetryProvider

__all__ = ["UnavailableProvider"]


class UnavailableProvider(TelemetryProvider):
    """Stands in for a missing GPU source so the server still starts and can explain itself."""

    name = "none"
    simulated = False

    def __init__(self, reason: str) -> None:
        self._reason = reason

    @property
    def reason(self) -> str:
        return self._reason

    def devices(self) -> list[GpuDevice]:
        return []

    def sample(self) -> list[GpuSample]:
        return []
