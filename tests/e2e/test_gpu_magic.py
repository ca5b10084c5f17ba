"""``%gpu`` end to end: real jupyter servers, real ipykernel kernels, one SQLite ledger."""

from __future__ import annotations

import ctypes.util
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_dlinfra.testing.server import ExecResult, KernelSession, ServerProcess, wait_until

CUDA = "__import__('os').environ.get('CUDA_VISIBLE_DEVICES')"


def allocations(server: ServerProcess, **query: str) -> list[dict[str, Any]]:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    found: list[dict[str, Any]] = server.get(f"dlinfra/api/allocations?{qs}")["allocations"]
    return found


def of_kernel(server: ServerProcess, kernel: KernelSession) -> list[dict[str, Any]]:
    return [a for a in allocations(server) if a["kernel_id"] == kernel.kernel_id]


def in_background(kernel: KernelSession, code: str) -> tuple[threading.Thread, list[ExecResult]]:
    out: list[ExecResult] = []
    thread = threading.Thread(target=lambda: out.append(kernel.execute(code, timeout=120)))
    thread.start()
    return thread, out


def test_two_kernels_get_disjoint_gpus_and_a_third_waits(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(gpus=4)
    k1, k2, k3 = (server.start_kernel() for _ in range(3))
    r1 = k1.execute("%gpu 2")
    r2 = k2.execute("%gpu 2")
    for result in (r1, r2):
        assert result.error is None and "Granted 2 GPUs (simulated)" in result.stdout, result
    set1, set2 = (set(k.value(CUDA).split(",")) for k in (k1, k2))
    assert len(set1) == len(set2) == 2 and not set1 & set2
    assert set1 | set2 == {g["uuid"] for g in server.get("dlinfra/api/cluster")["nodes"][0]["gpus"]}

    thread, out = in_background(k3, "%gpu 1")

    def queued_entry() -> Any:
        queue = server.get("dlinfra/api/queue")["queue"]
        return queue[0] if queue else None

    entry = wait_until(queued_entry, timeout=30, what="the third kernel to queue")
    assert entry["kernel_id"] == k3.kernel_id and entry["position"] == 1
    assert "0 of 4 free" in entry["waiting_reason"]

    k1.shutdown()  # DELETE /api/kernels/{id} returns once the kernel is gone

    def granted() -> Any:
        return [a for a in of_kernel(server, k3) if a["state"] == "granted"]

    grant = wait_until(granted, timeout=1.0, interval=0.01, what="a grant after the shutdown")
    assert set(grant[0]["cuda_visible_devices"].split(",")) <= set1
    thread.join(timeout=60)
    result = out[0]
    assert "Granted 1 GPU" in result.stdout, result
    assert any("Queued at position 1" in d or "Granted after" in d for d in result.displays)
    assert k3.value(CUDA) == grant[0]["cuda_visible_devices"]


def test_timeout_leaves_the_queue(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(gpus=2)
    holder, waiter = server.start_kernel(), server.start_kernel()
    holder.execute("%gpu 2")
    result = waiter.execute("%gpu 1 --timeout 0.5")
    assert result.error is None
    assert any("Gave up after" in d for d in result.displays), result
    assert server.get("dlinfra/api/queue")["queue"] == []
    assert allocations(server, state="all", kernel_id=waiter.kernel_id)[0]["state"] == "cancelled"
    assert waiter.value(CUDA) == ""


def test_no_wait_applies_the_grant_before_a_later_cell(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(gpus=1)
    holder, waiter = server.start_kernel(), server.start_kernel()
    holder.execute("%gpu 1")
    result = waiter.execute("%gpu 1 --no-wait")
    assert "Queued at position 1" in result.stdout
    assert waiter.value(CUDA) == ""
    holder.execute("%gpu release")
    later = waiter.execute("x = 1")
    assert "Granted 1 GPU" in later.stdout
    assert waiter.value(CUDA).startswith("GPU-")


def test_show_release_and_model_filter(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(
        gpus=4, args=("--DLInfra.simulated_gpu_models=A100", "--DLInfra.simulated_gpu_models=H100")
    )
    kernel = server.start_kernel()
    assert "holds no GPUs; 4 of 4 are free" in kernel.execute("%gpu").stdout
    got = kernel.execute("%gpu 2 --model h100")
    assert "Granted 2 GPUs" in got.stdout, got
    assert got.stdout.count("(H100)") == 2
    shown = kernel.execute("%gpu").stdout
    assert "This kernel holds 2 GPU(s) (simulated)" in shown and "% busy" in shown
    released = kernel.execute("%gpu release")
    assert "Released 2 GPU(s)" in released.stdout
    assert of_kernel(server, kernel) == []
    assert kernel.value(CUDA) == ""


def test_wrong_use_prints_one_clear_line(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(gpus=4)
    kernel = server.start_kernel()
    cases = {
        "%gpu 0": "ask for at least 1 GPU",
        "%gpu -2": "ask for at least 1 GPU",
        "%gpu 9": "asked for 9 GPUs but node",
        "%gpu 1 --model V100": "no GPU of model 'V100'",
        "%gpu lots": "expected a number of GPUs",
        "%gpu 1 --timeout -1": "--timeout must be a positive number",
        "%gpu --model A100": "say how many GPUs",
    }
    for line, expected in cases.items():
        result = kernel.execute(line)
        assert result.error is None, (line, result)
        assert result.stderr.startswith("%gpu: "), (line, result)
        assert expected in result.stderr.splitlines()[0], (line, result)
        assert "Traceback" not in result.text
    assert of_kernel(server, kernel) == []


def test_unreachable_server_is_one_line(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(gpus=1)
    kernel = server.start_kernel()
    kernel.execute("import os; os.environ['DLINFRA_API_URL'] = 'http://127.0.0.1:9/'")
    result = kernel.execute("%gpu 1")
    assert result.error is None and "Traceback" not in result.text
    assert result.stderr.startswith("%gpu: GPU ledger not reachable: cannot reach the dlinfra")


def test_magic_without_load_ext_and_with_it(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(gpus=1)
    kernel = server.start_kernel()
    assert kernel.value("get_ipython().find_line_magic('gpu') is not None") is True
    loaded = kernel.execute("%load_ext jupyter_dlinfra")
    assert loaded.error is None
    assert "Granted 1 GPU" in kernel.execute("%gpu 1").stdout


def test_gpu_kernelspec_takes_gpus_at_launch(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(gpus=2)
    first = server.start_kernel("python3-2gpu")
    held = first.value(CUDA).split(",")
    assert len(held) == 2 and all(u.startswith("GPU-") for u in held)
    assert of_kernel(server, first)[0]["state"] == "granted"
    second = server.start_kernel("python3-1gpu")
    assert second.value(CUDA) == ""
    assert of_kernel(server, second)[0]["state"] == "queued"
    first.shutdown()
    applied = second.execute("y = 2")
    assert "Granted 1 GPU" in applied.stdout
    assert second.value(CUDA) in held


def test_restart_and_death_release_gpus(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(gpus=2)
    kernel = server.start_kernel()
    kernel.execute("%gpu 2")
    server.post(f"api/kernels/{kernel.kernel_id}/restart", {})
    assert of_kernel(server, kernel) == []
    kernel.wait_ready()
    kernel.execute("%gpu 1")
    assert len(of_kernel(server, kernel)) == 1
    model = server.get(f"api/kernels/{kernel.kernel_id}")
    assert model["id"] == kernel.kernel_id
    _kill_kernel_process(kernel)
    wait_until(lambda: of_kernel(server, kernel) == [], timeout=30, what="release after death")
    ended = allocations(server, state="all", kernel_id=kernel.kernel_id)
    assert any("died" in (a["end_reason"] or "") for a in ended), ended


def _kill_kernel_process(kernel: KernelSession) -> None:
    import os
    import signal

    pid = kernel.value("__import__('os').getpid()")
    os.kill(pid, signal.SIGKILL)


def test_cuda_already_initialised_offers_a_restart_that_keeps_the_gpus(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # a real shared object mapped under the driver's name: what the magic looks for
    libm = ctypes.util.find_library("m")
    assert libm
    source = next(
        Path(p) / libm
        for p in (
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib/aarch64-linux-gnu",
            "/lib64",
            "/usr/lib64",
        )
        if (Path(p) / libm).exists()
    )
    fake = tmp_path / "libcuda.so.1"
    shutil.copy(source, fake)
    server = start_server(gpus=2)
    kernel = server.start_kernel()
    kernel.execute(f"import ctypes; _driver = ctypes.CDLL({str(fake)!r})")
    result = kernel.execute("%gpu 2")
    assert "Granted 2 GPUs" in result.stdout
    assert "CUDA driver (libcuda) is loaded" in result.stderr
    assert "%gpu --restart" in result.stderr
    granted = of_kernel(server, kernel)[0]
    before = kernel.value("__import__('os').getpid()")
    restart = kernel.execute("%gpu --restart", timeout=5, partial=True)
    assert "Restarting this kernel with 2 GPU(s)" in restart.stdout

    def relaunched_with_gpus() -> Any:
        try:
            # a new process: this one set the variable too, before it asked for the restart
            pid = kernel.value("__import__('os').getpid()")
            return pid != before and kernel.value(CUDA) == granted["cuda_visible_devices"]
        except Exception:
            return False

    wait_until(relaunched_with_gpus, timeout=60, interval=0.2, what="the relaunched kernel")
    assert kernel.value("'_driver' in globals()") is False  # really a new process
    after = of_kernel(server, kernel)
    assert [a["id"] for a in after] == [granted["id"]] and after[0]["state"] == "granted"
