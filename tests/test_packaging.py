"""What installing the package must give a user: extension on, provisioner found, GPU kernels."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

import jupyter_dlinfra
import jupyter_dlinfra.provisioning
import jupyter_dlinfra.telemetry


def test_server_extension_is_enabled_by_installation() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jupyter_server.extension.serverextension", "list"],
        capture_output=True,
        text=True,
        check=True,
    )
    listing = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    assert "jupyter_dlinfra enabled" in listing, listing
    assert re.search(r"jupyter_dlinfra [0-9.]+ OK", listing), listing


def test_provisioner_entry_point() -> None:
    found = entry_points(group="jupyter_client.kernel_provisioners")
    ours = [ep for ep in found if ep.name == "dlinfra-provisioner"]
    assert len(ours) == 1
    assert ours[0].load() is jupyter_dlinfra.provisioning.DLInfraProvisioner


def test_gpu_kernelspecs_are_installed() -> None:
    specs = KernelSpecManager().get_all_specs()
    for name, gpus in (("python3-1gpu", 1), ("python3-2gpu", 2), ("python3-4gpu", 4)):
        spec = specs[name]["spec"]
        # after "Python 3 (ipykernel)" in the order Lab lists kernels: its first choice is plain
        assert spec["display_name"] == f"Python 3 with {gpus} GPU{'s' if gpus > 1 else ''}"
        provisioner = spec["metadata"]["kernel_provisioner"]
        assert provisioner == {"provisioner_name": "dlinfra-provisioner", "config": {"gpus": gpus}}


def test_public_api_is_pinned() -> None:
    assert jupyter_dlinfra.__all__ == ["__version__", "load_ipython_extension"]
    assert sorted(jupyter_dlinfra.provisioning.__all__) == [
        "DLInfraProvisioner",
        "KernelLedgerPort",
        "LaunchPlan",
        "get_port",
        "set_port",
    ]
    assert sorted(jupyter_dlinfra.telemetry.__all__) == sorted(
        [
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
    )


def test_importing_the_package_stays_light() -> None:
    """Kernels import it at start-up: the server side must not come along."""
    code = (
        "import sys, jupyter_dlinfra, jupyter_dlinfra.kernel.magics; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('jupyter_server', 'sqlalchemy', 'tornado', 'urllib.request')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_wheel_holds_no_test_support() -> None:
    """The harness and stand-ins (server process, control plane, node agent) stay out of it."""
    from hatchling.builders.wheel import WheelBuilder

    root = Path(jupyter_dlinfra.__file__).resolve().parent.parent
    files = {f.distribution_path for f in WheelBuilder(str(root)).recurse_included_files()}
    assert "jupyter_dlinfra/server/app.py" in files
    assert "jupyter_dlinfra/kernel/magics.py" in files
    shipped = sorted(f for f in files if f.startswith("jupyter_dlinfra/testing"))
    assert shipped == []
