from __future__ import annotations

import os
import re
import sys
import types
from typing import Any

import psutil
import pytest

from jupyter_dlinfra.server.views import outside_ledger
from jupyter_dlinfra.telemetry import NvmlProvider, TelemetryUnavailable


def _nvml_available() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.skipif(_nvml_available(), reason="this machine has an NVIDIA GPU")
def test_without_nvml_the_error_says_why() -> None:
    with pytest.raises(TelemetryUnavailable, match=r"^NVML is not available: .+") as caught:
        NvmlProvider()
    assert isinstance(caught.value, RuntimeError)
    # The sentence must carry NVML's own words, not only a code.
    assert re.search(r"[A-Za-z]{4,}", str(caught.value).split(":", 1)[1])


@pytest.mark.skipif(not _nvml_available(), reason="needs an NVIDIA GPU")
def test_devices_match_nvml() -> None:
    import pynvml

    provider = NvmlProvider()
    try:
        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
        devices = provider.devices()
        assert len(devices) == count
        assert [gpu.index for gpu in devices] == list(range(count))
        for gpu in devices:
            assert gpu.uuid.startswith("GPU-")
            assert gpu.model
            assert gpu.memory_total_bytes > 0
        assert provider.reason.startswith("NVML driver ")
        assert (provider.name, provider.simulated) == ("nvml", False)
    finally:
        provider.close()


@pytest.mark.skipif(not _nvml_available(), reason="needs an NVIDIA GPU")
def test_sample_values_in_range() -> None:
    provider = NvmlProvider(clock=lambda: 42.0)
    try:
        uuids = {gpu.uuid for gpu in provider.devices()}
        samples = provider.sample()
        assert samples
        for sample in samples:
            assert sample.uuid in uuids
            assert sample.at == 42.0
            assert 0.0 <= sample.utilization_percent <= 100.0
            assert 0 <= sample.memory_used_bytes <= sample.memory_total_bytes
            pids = [proc.pid for proc in sample.processes]
            assert len(pids) == len(set(pids))
            assert all(proc.memory_used_bytes >= 0 for proc in sample.processes)
    finally:
        provider.close()


@pytest.mark.skipif(not _nvml_available(), reason="needs an NVIDIA GPU")
def test_close_is_idempotent() -> None:
    provider = NvmlProvider()
    provider.close()
    provider.close()
    assert provider.sample() == [] and provider.devices() == []


class _FakeNvml(types.ModuleType):
    """pynvml as the driver of one GPU would answer it: a stand-in at the module boundary for
    what this machine lacks. ``compute``/``graphics``: the pids NVML lists, with memory."""

    class NVMLError(Exception):
        pass

    def __init__(self, compute: dict[int, int], graphics: dict[int, int]) -> None:
        super().__init__("pynvml")
        self.compute, self.graphics = compute, graphics

    def nvmlInit(self) -> None: ...

    def nvmlShutdown(self) -> None: ...

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        return ("handle", index)

    def nvmlDeviceGetUUID(self, handle: object) -> bytes:
        return b"GPU-00000000-1111-2222-3333-444444444444"

    def nvmlDeviceGetName(self, handle: object) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> Any:
        return types.SimpleNamespace(total=80 * 2**30, used=3 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> Any:
        return types.SimpleNamespace(gpu=64, memory=20)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: object) -> list[Any]:
        return [types.SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self.compute.items()]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: object) -> list[Any]:
        return [types.SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self.graphics.items()]


def _no_such_pid() -> int:
    return next(p for p in range(4_000_000, 4_100_000) if not psutil.pid_exists(p))


def test_processes_on_a_gpu_carry_their_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    me, gone, display = os.getpid(), _no_such_pid(), os.getppid()
    fake = _FakeNvml(compute={me: 2**30, gone: 2**20}, graphics={display: 2**25, me: 2**29})
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    provider = NvmlProvider(clock=lambda: 42.0)
    try:
        [sample] = provider.sample()
    finally:
        provider.close()
    owner = psutil.Process().username()
    found = {p.pid: (p.user, p.compute, p.memory_used_bytes) for p in sample.processes}
    assert found == {
        me: (owner, True, 2**30),
        gone: (None, True, 2**20),
        display: (psutil.Process(display).username(), False, 2**25),
    }
    # on a GPU the ledger does not hold, the API names who computes there (not who draws)
    outside = outside_ledger(sample)
    assert outside is not None and outside["users"] == [owner]
    assert sorted(p["pid"] for p in outside["processes"]) == sorted([me, gone])
