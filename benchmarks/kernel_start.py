"""Kernel start time: the dlinfra provisioner against jupyter_client's stock LocalProvisioner.

Runs two real ``jupyter server`` processes side by side (each with its own temporary workdir,
SQLite ledger and 4 simulated GPUs): "ours" with default settings, where the extension makes
``dlinfra-provisioner`` the default for the stock python3 kernel, and "stock" with
``--KernelProvisionerFactory.default_provisioner_name=local-provisioner``. After checking that the
two really differ, it alternates between them and times, per kernel, from just before
``POST /api/kernels`` to the shell ``execute_reply`` of a ``pass`` sent over the kernel websocket
(connection retries while the kernel starts are counted). Deleting the kernel is not timed.

Usage: ``.venv/bin/python benchmarks/kernel_start.py [--quick]``. The last line printed starts with
``RESULT`` and holds key=value pairs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from jupyter_dlinfra.testing.server import (
    HttpError,
    KernelSession,
    ServerProcess,
    connect_kernel,
    execute_request,
    wait_until,
)

SIMULATED_GPUS = 4
TARGET_RATIO = 1.05
WARMUP_ROUNDS = 2
STOCK_ARGS = ("--KernelProvisionerFactory.default_provisioner_name=local-provisioner",)


@dataclass(frozen=True)
class Sample:
    """Seconds from just before POST /api/kernels to each milestone."""

    posted: float  # POST /api/kernels answered
    connected: float  # kernel websocket open
    replied: float  # execute_reply of `pass` received


def time_kernel_start(server: ServerProcess, *, timeout: float = 60.0) -> tuple[Sample, str]:
    """Start a python3 kernel and run ``pass`` in it; return the timings and the kernel id."""
    session = uuid.uuid4().hex
    msg_id = uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    t0 = time.perf_counter()
    model = server.post("api/kernels", {"name": "python3"})
    t_post = time.perf_counter()
    kernel_id: str = model["id"]
    ws = connect_kernel(server, kernel_id, session, deadline)
    try:
        t_conn = time.perf_counter()
        ws.send(execute_request(session, msg_id, "pass", username="bench", store_history=False))
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no execute_reply from kernel {kernel_id} in {timeout} s")
            ws.settimeout(remaining)
            msg = json.loads(ws.recv())
            if (
                msg.get("channel") == "shell"
                and msg.get("msg_type") == "execute_reply"
                and msg.get("parent_header", {}).get("msg_id") == msg_id
            ):
                t_reply = time.perf_counter()
                status = msg["content"].get("status")
                if status != "ok":
                    raise RuntimeError(f"`pass` failed in kernel {kernel_id}: {msg['content']}")
                break
    finally:
        ws.close()
    return Sample(t_post - t0, t_conn - t0, t_reply - t0), kernel_id


def delete_kernel(server: ServerProcess, kernel_id: str, *, timeout: float = 30.0) -> None:
    try:
        server.delete(f"api/kernels/{kernel_id}")
    except HttpError as err:
        if err.status != 404:
            raise
    wait_until(
        lambda: all(k["id"] != kernel_id for k in server.get("api/kernels")),
        timeout=timeout,
        interval=0.02,
        what=f"kernel {kernel_id} to be gone",
    )


def verify(ours: ServerProcess, stock: ServerProcess) -> None:
    """Check that "ours" really runs the dlinfra provisioner and "stock" really does not."""
    checks = (
        'bool(os.environ.get("DLINFRA_KERNEL_ID")) and '
        'get_ipython().find_line_magic("gpu") is not None'
    )
    for name, server, expected in (("ours", ours, True), ("stock", stock, False)):
        kernel: KernelSession | None = None
        try:
            kernel = server.start_kernel("python3")
            kernel.execute("import os")
            has_id = bool(kernel.value('os.environ.get("DLINFRA_KERNEL_ID")'))
            if expected and not kernel.value(checks):
                raise RuntimeError(f"{name}: DLINFRA_KERNEL_ID unset or %gpu missing")
            if not expected and has_id:
                raise RuntimeError(f"{name}: DLINFRA_KERNEL_ID is set, provisioner not stock")
        finally:
            if kernel is not None:
                delete_kernel(server, kernel.kernel_id)


def summarize(samples: list[Sample]) -> dict[str, float]:
    replied = [s.replied for s in samples]
    return {
        "p50": statistics.median(replied),
        "mean": statistics.fmean(replied),
        "min": min(replied),
        "max": max(replied),
        "post_p50": statistics.median(s.posted for s in samples),
        "conn_p50": statistics.median(s.connected for s in samples),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 rounds instead of 20")
    args = parser.parse_args()
    rounds = 6 if args.quick else 20

    with tempfile.TemporaryDirectory(prefix="dlinfra-bench-start-") as tmp:
        base = Path(tmp)
        servers = {
            name: ServerProcess(
                base / name,
                db_url=f"sqlite:///{base / name / 'ledger.sqlite'}",
                simulated_gpus=SIMULATED_GPUS,
                extra_args=STOCK_ARGS if name == "stock" else (),
            )
            for name in ("ours", "stock")
        }
        samples: dict[str, list[Sample]] = {"ours": [], "stock": []}
        try:
            for server in servers.values():
                server.workdir.mkdir(parents=True, exist_ok=True)
                server.start()
            verify(servers["ours"], servers["stock"])
            for i in range(WARMUP_ROUNDS + rounds):
                # ABBA order, so that neither side always goes first
                order = ("ours", "stock") if i % 2 == 0 else ("stock", "ours")
                for name in order:
                    sample, kernel_id = time_kernel_start(servers[name])
                    delete_kernel(servers[name], kernel_id)
                    if i >= WARMUP_ROUNDS:
                        samples[name].append(sample)
        except BaseException:
            for name, server in servers.items():
                log = server.log_text()
                if log:
                    print(f"--- {name} server log (tail) ---\n{log[-3000:]}", file=sys.stderr)
            raise
        finally:
            for server in servers.values():
                try:
                    server.stop()
                except Exception as err:
                    print(f"server stop failed ({server.url}): {err}", file=sys.stderr)
                    server.crash()

    stats = {name: summarize(s) for name, s in samples.items()}
    ours, stock = stats["ours"], stats["stock"]
    ratio = ours["p50"] / stock["p50"]
    # ours minus stock within each round: drift and load spikes shared by the pair cancel out
    paired_ms = statistics.median(
        (o.replied - s.replied) * 1000
        for o, s in zip(samples["ours"], samples["stock"], strict=True)
    )
    post_ms = (ours["post_p50"] - stock["post_p50"]) * 1000
    print(
        f"kernel start, POST api/kernels -> execute_reply of `pass`; {rounds} rounds, alternating"
    )
    print(f"{'s':<8}{'p50':>8}{'mean':>8}{'min':>8}{'max':>8}{'POST p50':>10}{'ws p50':>8}")
    for name in ("ours", "stock"):
        s = stats[name]
        cells = "".join(f"{s[k]:>8.3f}" for k in ("p50", "mean", "min", "max"))
        print(f"{name:<8}{cells}{s['post_p50']:>10.3f}{s['conn_p50']:>8.3f}")
    print(f"ours - stock, median of per-round differences: {paired_ms:+.1f} ms")
    print(f"POST api/kernels p50, ours - stock (has the ledger work at launch): {post_ms:+.1f} ms")
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(f"target: ours/stock p50 <= {TARGET_RATIO} ({verdict}): {ratio:.3f}")
    print(
        f"RESULT start_ratio={ratio:.3f} ours_p50_s={ours['p50']:.3f} "
        f"stock_p50_s={stock['p50']:.3f} ours_mean_s={ours['mean']:.3f} "
        f"stock_mean_s={stock['mean']:.3f} paired_diff_ms={paired_ms:.1f} "
        f"post_diff_ms={post_ms:.1f} rounds={rounds}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
