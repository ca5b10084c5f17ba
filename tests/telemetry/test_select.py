from __future__ import annotations

import pytest

from jupyter_dlinfra.telemetry import (
    SimulatedProvider,
    TelemetryUnavailable,
    UnavailableProvider,
    select_provider,
    simulated_gpus_from_env,
    simulated_models_from_env,
)


def _nvml_available() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("  ", None), ("0", 0), ("8", 8), (" 4 ", 4)],
)
def test_simulated_gpus_from_env(value: str | None, expected: int | None) -> None:
    environ = {} if value is None else {"DLINFRA_SIMULATED_GPUS": value}
    assert simulated_gpus_from_env(environ) == expected


@pytest.mark.parametrize("value", ["eight", "-1", "2.5"])
def test_simulated_gpus_from_env_rejects_garbage(value: str) -> None:
    with pytest.raises(ValueError, match="DLINFRA_SIMULATED_GPUS must be a whole number"):
        simulated_gpus_from_env({"DLINFRA_SIMULATED_GPUS": value})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        (" , ", None),
        ("H100", ["H100"]),
        ("A100 80GB, H100 ,, L4", ["A100 80GB", "H100", "L4"]),
    ],
)
def test_simulated_models_from_env(value: str | None, expected: list[str] | None) -> None:
    environ = {} if value is None else {"DLINFRA_SIMULATED_GPU_MODELS": value}
    assert simulated_models_from_env(environ) == expected


def test_select_simulated() -> None:
    provider = select_provider(
        simulated_gpus=3, simulated_models=["L4", "T4"], node="n", clock=lambda: 5.0
    )
    assert isinstance(provider, SimulatedProvider)
    assert [gpu.model for gpu in provider.devices()] == ["L4", "T4", "L4"]
    assert {sample.at for sample in provider.sample()} == {5.0}


def test_select_simulated_with_no_models_uses_the_default() -> None:
    provider = select_provider(simulated_gpus=1, simulated_models=[], node="n")
    assert provider.devices()[0].model == "Simulated A100 80GB"


def test_select_rejects_negative_count() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        select_provider(simulated_gpus=-1, simulated_models=[], node="n")


@pytest.mark.skipif(_nvml_available(), reason="this machine has an NVIDIA GPU")
def test_select_without_gpus_explains_itself() -> None:
    provider = select_provider(simulated_gpus=0, simulated_models=[], node="n")
    assert isinstance(provider, UnavailableProvider)
    assert (provider.name, provider.simulated) == ("none", False)
    assert provider.devices() == [] and provider.sample() == []
    assert "NVML" in provider.reason
    assert "DLINFRA_SIMULATED_GPUS=8" in provider.reason
    assert "c.DLInfra.simulated_gpus" in provider.reason
    provider.close()


@pytest.mark.skipif(not _nvml_available(), reason="needs an NVIDIA GPU")
def test_select_with_gpus_uses_nvml() -> None:
    provider = select_provider(simulated_gpus=0, simulated_models=[], node="n")
    try:
        assert provider.name == "nvml"
    finally:
        provider.close()


def test_telemetry_unavailable_is_a_runtime_error() -> None:
    assert issubclass(TelemetryUnavailable, RuntimeError)
