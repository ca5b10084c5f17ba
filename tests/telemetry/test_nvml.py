from __future__ import annotations

import re

import pytest

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
