"""The parts of %gpu that need no server: parsing, CUDA detection, a kernel without a ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jupyter_dlinfra.kernel.client import ApiFailure, DLInfraUnavailable
from jupyter_dlinfra.kernel.cuda_state import cuda_initialised
from jupyter_dlinfra.kernel.magics import Command, GpuMagic, UsageError, parse_line


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", Command(action="show")),
        ("  ", Command(action="show")),
        ("release", Command(action="release")),
        ("--restart", Command(action="restart")),
        ("--help", Command(action="help")),
        ("2", Command(action="request", count=2)),
        ("4 --model A100", Command(action="request", count=4, model="A100")),
        ("1 --timeout 30", Command(action="request", count=1, timeout=30.0)),
        ("1 --no-wait", Command(action="request", count=1, wait=False)),
        ("2 --restart", Command(action="request", count=2, restart=True)),
        ("1 --model 'A100 80GB'", Command(action="request", count=1, model="A100 80GB")),
        ("keep", Command(action="keep")),
        ("profile 30", Command(action="profile", seconds=30.0)),
        ("profile 0.5", Command(action="profile", seconds=0.5)),
        ("16 --nodes 2", Command(action="request", count=16, nodes=2)),
    ],
)
def test_parse(line: str, expected: Command) -> None:
    assert parse_line(line) == expected


def test_parse_the_profile_cell_magic() -> None:
    assert parse_line("profile", "train()") == Command(action="profile")
    with pytest.raises(UsageError, match="give no SECONDS"):
        parse_line("profile 10", "train()")
    with pytest.raises(UsageError, match="only %%gpu profile takes a cell"):
        parse_line("2", "train()")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0", "at least 1 GPU"),
        ("-1", "at least 1 GPU"),
        ("two", "expected a number of GPUs"),
        ("1.5", "expected a number of GPUs"),
        ("1 --timeout 0", "--timeout must be a positive"),
        ("1 --timeout soon", "invalid float value"),
        ("--model A100", "say how many GPUs"),
        ("1 --colour red", "unrecognized arguments"),
        ("1 'unclosed", "No closing quotation"),
        ("2 3", "unexpected '3'"),
        ("keep now", "takes nothing more"),
        ("release all", "takes nothing more"),
        ("profile", "say for how long"),
        ("profile soon", "expected a number of seconds"),
        ("profile 0", "more than 0"),
        ("profile 7200", "at most 3600"),
        ("2 --nodes 3", "--nodes must be from 1 to the 2 GPUs asked for, not 3"),
        ("2 --nodes 0", "--nodes must be from 1"),
        ("--nodes 2", "say how many GPUs"),
    ],
)
def test_parse_errors(line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_line(line)


def test_cuda_detection_reads_the_process_maps(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert cuda_initialised(maps) is None
    maps.write_text(maps.read_text() + "7f02-7f03 r-xp 0 08:01 2 /usr/lib/libcuda.so.550.54\n")
    assert cuda_initialised(maps) == "the CUDA driver (libcuda) is loaded in this process"
    assert cuda_initialised(tmp_path / "missing") is None


def test_a_kernel_without_a_ledger_gets_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    magic = GpuMagic(shell=None, environ={})
    magic("2")
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("%gpu: GPU ledger not reachable: this kernel was not started by")


def test_nodes_are_for_jobs_not_for_a_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    # refused before anything is asked of the ledger (this kernel has none)
    GpuMagic(shell=None, environ={})("16 --nodes 2")
    err = capsys.readouterr().err
    assert err.startswith("%gpu: --nodes applies when the notebook runs as a job"), err
    assert "e.g. %gpu 2" in err


def test_usage_error_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    GpuMagic(shell=None, environ={})("0")
    err = capsys.readouterr().err
    assert err.startswith("%gpu: ask for at least 1 GPU") and "%gpu release" in err


class _LedgerAway:
    """A kernel's API client whose ledger answers 503 twice, then grants the queued request."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.asked = 0

    def allocation(self, allocation_id: int, *, wait: float = 0.0) -> dict[str, Any]:
        self.asked += 1
        if self.failures:
            raise self.failures.pop(0)
        return {"id": allocation_id, "state": "granted", "gpus": [], "count": 1}

    def release(self, allocation_id: int) -> None:
        raise AssertionError("a wait through an outage must keep its place in the queue")


def test_a_queued_request_keeps_waiting_while_the_ledger_is_away() -> None:
    client = _LedgerAway(
        [
            ApiFailure(503, "the GPU ledger's database is unreachable", "ledger_unavailable"),
            DLInfraUnavailable("connection refused"),
            ApiFailure(502, "the gateway does not answer", "gateway_unreachable"),
        ]
    )
    magic = GpuMagic(shell=None, environ={})
    magic._client = client  # type: ignore[assignment]
    pauses: list[float] = []
    magic.sleep = pauses.append  # type: ignore[method-assign]
    queued = {"id": 7, "state": "queued", "position": 1, "waiting_reason": "all GPUs are held"}
    assert magic._wait(queued, None) == {"id": 7, "state": "granted", "gpus": [], "count": 1}
    assert client.asked == 4 and len(pauses) == 3


def test_a_refusal_while_waiting_is_not_waited_out() -> None:
    client = _LedgerAway([ApiFailure(403, "not your kernel", "forbidden")])
    magic = GpuMagic(shell=None, environ={})
    magic._client = client  # type: ignore[assignment]
    magic.sleep = lambda s: None  # type: ignore[method-assign]
    queued = {"id": 7, "state": "queued", "position": 1, "waiting_reason": "all GPUs are held"}
    with pytest.raises(ApiFailure):
        magic._wait(queued, None)


class _HandedBack:
    """A kernel's API client: its pending request of the pool was handed back (released) and
    asked again as request 9, which waits."""

    def allocation(self, allocation_id: int, *, wait: float = 0.0) -> dict[str, Any]:
        assert allocation_id == 7
        return {
            "id": 7,
            "state": "released",
            "placement": "pool",
            "end_reason": "kubernetes did not place its pod on gpu-node-b in 45 s",
        }

    def my_allocations(self) -> list[dict[str, Any]]:
        return [{"id": 9, "state": "queued", "placement": "pool", "position": 1}]


def test_a_pending_request_handed_back_is_followed_as_asked_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    magic = GpuMagic(shell=None, environ={"DLINFRA_PENDING_ALLOCATION": "7"})
    magic._client = _HandedBack()  # type: ignore[assignment]
    magic.before_cell()
    assert magic.pending == 9
    assert "ended" not in capsys.readouterr().err
