"""``%gpu profile`` and the hints, end to end: real kernels whose processes really burn CPU."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from jupyter_dlinfra.testing.server import ServerProcess

# three worker processes spin for a few seconds: a data pipeline that pegs the CPU
BURN = """\
import subprocess, sys
spin = "import time\\nend = time.time() + 6\\nwhile time.time() < end: pass"
workers = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(3)]
for w in workers:
    w.wait()
"""


def test_profile_finds_an_input_bound_pipeline_and_small_batches(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    load = tmp_path / "load.json"
    # GPUs busy at 12 % with 1 GiB of 80 GiB used: starving, and small batches
    load.write_text(json.dumps({"0": {"utilization_percent": 12, "memory_used_bytes": 2**30}}))
    server = start_server(
        gpus=1,
        args=("--DLInfra.telemetry_interval=0.2",),
        env={"DLINFRA_SIMULATED_LOAD_FILE": str(load)},
    )
    kernel = server.start_kernel()
    no_gpus = kernel.execute("%gpu profile 1")
    assert "holds no GPUs: nothing to profile" in no_gpus.stdout, no_gpus

    assert "Granted 1 GPU" in kernel.execute("%gpu 1").stdout
    report = kernel.execute("%%gpu profile\n" + BURN, timeout=60)
    assert report.error is None, report
    out = report.stdout
    assert "GPU profile of this kernel's 1 GPU(s) (simulated)" in out, out
    assert "GPU utilisation: mean 12 %, max 12 %" in out
    assert "Input-bound: the kernel's CPU is pegged" in out
    assert "Batch too small" in out and "at most 1 % of their memory" in out

    # the line form samples for a set time; nothing burns now, so no input-bound finding
    quiet = kernel.execute("%gpu profile 1.5")
    assert "samples over" in quiet.stdout and "Input-bound" not in quiet.stdout, quiet

    # the same findings reach %gpu (the sidebar reads them from the event stream)
    shown = kernel.execute("%gpu")
    assert "Hint: Batch too small" in shown.stdout, shown

    # all of it ran in the user's kernel without the server side coming along
    server_side = kernel.value(
        "sorted(m for m in __import__('sys').modules"
        " if m.split('.')[0] in ('sqlalchemy', 'jupyter_server')"
        " or (m.startswith('jupyter_dlinfra.')"
        " and m not in ('jupyter_dlinfra.kernel', 'jupyter_dlinfra._version')"
        " and not m.startswith('jupyter_dlinfra.kernel.')))"
    )
    assert server_side == [], server_side
