"""The parts of %gpu that need no server: parsing, CUDA detection, a kernel without a ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jupyter_dlinfra.kernel.client import ApiFailure, DLInfraUnavailable
from jupyter_dlinfra.kernel.cuda_state import cuda_initialised
from jupyter_dlinfra.kernel.magics import Command, GpuMagic, UsageError, _gpu_line, parse_line


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
        ("park", Command(action="park")),
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


@pytest.mark.parametrize(
    ("cell", "only_gpu"),
    [
        ("%gpu release", True),
        ("%gpu\n%gpu keep\n", True),
        ("%%gpu profile\nx = 1", False),
        ("%gpu\nprint(1)", False),
        ("", False),
        (None, False),
    ],
)
def test_a_cell_of_gpu_lines_only_does_not_resume_parked_gpus(
    cell: str | None, only_gpu: bool
) -> None:
    assert _gpu_line(cell) is only_gpu


class _Parked:
    """A kernel's API client: its grant 5 is parked, the resume waits for a loan, then the
    GPUs come back; or the restore fails and the grant ends."""

    def __init__(self, fails: bool = False) -> None:
        self.fails = fails
        self.resumed = 0
        self.looks = 0

    def usage(self) -> dict[str, Any]:
        park = {"state": "parked", "since": None, "reason": "parked: idle", "bytes": 1}
        return {"held": [], "idle": None, "parked": {"allocation_id": 5, "park": park}}

    def resume(self) -> dict[str, Any]:
        self.resumed += 1
        return {"allocation": {"id": 5, "state": "granted", "park": {"state": "resuming"}}}

    def allocation(self, allocation_id: int, *, wait: float = 0.0) -> dict[str, Any]:
        self.looks += 1
        if self.looks == 1:
            return {"id": 5, "state": "granted", "park": {"state": "restoring"}}
        if self.fails:
            return {"id": 5, "state": "released", "park": None, "end_reason": "restore failed"}
        return {"id": 5, "state": "granted", "park": None}


class _Cell:
    def __init__(self, raw_cell: str) -> None:
        self.raw_cell = raw_cell


@pytest.mark.parametrize("fails", [False, True])
def test_a_parked_kernel_takes_its_gpus_back_before_a_cell(
    fails: bool, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shown: list[str] = []

    class Handle:
        def update(self, data: dict[str, str], raw: bool) -> None:
            shown.append(data["text/plain"])

    import IPython.display

    def display(data: dict[str, str], raw: bool, display_id: bool) -> Handle:
        shown.append(data["text/plain"])
        return Handle()

    monkeypatch.setattr(IPython.display, "display", display)
    magic = GpuMagic(shell=None, environ={"DLINFRA_ALLOCATION": "5"})
    client = _Parked(fails)
    magic._client = client  # type: ignore[assignment]
    magic.before_cell(_Cell("%gpu"))
    assert client.resumed == 0  # a %gpu line does not resume
    magic.before_cell(_Cell("x = 1"))
    assert client.resumed == 1
    assert shown[0].startswith("resuming your GPUs (parked") or shown[0].startswith(
        "resuming your GPUs: "
    )
    assert any("a batch job that borrowed them is stopping" in s for s in shown), shown
    if fails:
        assert shown[-1] == "your parked GPUs could not be resumed: restore failed"
        assert magic.holding is False
    else:
        assert shown[-1].startswith("resumed your GPUs in")
