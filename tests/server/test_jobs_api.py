"""Jobs through the REST API: who may see and cancel what, the root, the limits, sweeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from server_kit import register

from jupyter_dlinfra.core.books.jobs import JobState, NewJob
from jupyter_dlinfra.testing.server import write_notebook

Api = Callable[..., Awaitable[tuple[int, Any]]]


@pytest.fixture
def dlinfra_config() -> dict[str, Any]:
    return {
        "simulated_gpus": 2,
        "user_name": "alice",
        "max_notebook_bytes": 4000,
        "max_parameter_bytes": 200,
        "max_sweep_jobs": 4,
    }


def _foreign_job(app: Any, user: str = "bob") -> Any:
    jobs = app.service.jobs
    return jobs.book.create(
        NewJob(
            user=user,
            name="theirs",
            path="theirs.ipynb",
            backend="local",
            node=app.service.settings.node,
            server_id="another-server",
        ),
        workdir_for=lambda i: jobs.settings.jobs_root / f"{i}-theirs",
    )


async def test_paths_must_stay_inside_the_root(
    api: Api, dlinfra_app: Any, jp_root_dir: Path, tmp_path: Path
) -> None:
    outside = write_notebook(tmp_path / "outside" / "secret.ipynb", "print('secret')")
    (jp_root_dir / "link.ipynb").symlink_to(outside)
    (jp_root_dir / "dir").mkdir()
    (jp_root_dir / "dir" / "up").symlink_to(outside.parent)
    for path, words in (
        ("../outside/secret.ipynb", "without '..'"),
        (str(outside), "relative to the server's root"),
        ("link.ipynb", "leads outside the server's root"),
        ("dir/up/secret.ipynb", "leads outside the server's root"),
        ("notes.txt", "only notebooks (.ipynb)"),
    ):
        status, err = await api("POST", "jobs", {"path": path})
        assert status == 400 and words in err["message"], (path, err)
    status, err = await api("POST", "jobs", {"path": "missing.ipynb"})
    assert status == 404 and err["reason"] == "no_notebook"
    assert dlinfra_app.service.jobs.book.jobs() == []


async def test_limits_on_notebooks_parameters_and_sweeps(api: Api, jp_root_dir: Path) -> None:
    write_notebook(jp_root_dir / "big.ipynb", "x = '" + "y" * 5000 + "'")
    write_notebook(jp_root_dir / "ok.ipynb", ("a = 1", ["parameters"]), "print(a)")
    status, err = await api("POST", "jobs", {"path": "big.ipynb"})
    assert status == 400 and "max_notebook_bytes" in err["message"], err
    status, err = await api("POST", "jobs", {"path": "ok.ipynb", "parameters": {"a": "z" * 500}})
    assert status == 400 and err["reason"] == "bad_parameters", err
    status, err = await api(
        "POST", "jobs", {"path": "ok.ipynb", "sweep": {"a": [1, 2, 3], "b": [1, 2]}}
    )
    assert status == 400 and "makes 6 jobs; the limit is 4" in err["message"]
    status, answer = await api("POST", "jobs", {"path": "ok.ipynb", "sweep": {"a": [1, 2]}})
    assert status == 201, answer
    assert [j["parameters"] for j in answer["jobs"]] == [{"a": 1}, {"a": 2}]
    assert [j["name"] for j in answer["jobs"]] == ["ok[a=1]", "ok[a=2]"]
    assert len({j["group_id"] for j in answer["jobs"]}) == 1


async def test_users_see_and_cancel_only_their_own_jobs(
    api: Api, dlinfra_app: Any, jp_root_dir: Path
) -> None:
    theirs = _foreign_job(dlinfra_app)
    write_notebook(jp_root_dir / "mine.ipynb", "print(1)")
    status, mine = await api("POST", "jobs", {"path": "mine.ipynb"})
    assert status == 201 and mine["user"] == "alice"
    status, listed = await api("GET", "jobs")
    assert [j["id"] for j in listed["jobs"]] == [mine["id"]]
    for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/log"), ("POST", "/rerun")):
        status, err = await api(method, f"jobs/{theirs.id}{suffix}")
        assert status == 403 and "belongs to bob" in err["message"], (method, suffix)
    status, err = await api("GET", "jobs?user=*")
    assert status == 403 and err["reason"] == "not_admin"
    assert dlinfra_app.service.jobs.book.job(theirs.id).state is JobState.QUEUED


@pytest.mark.parametrize(
    "dlinfra_config", [{"simulated_gpus": 1, "user_name": "alice", "admin_users": ["alice"]}]
)
async def test_admins_see_and_cancel_every_job(
    api: Api, dlinfra_app: Any, dlinfra_config: dict[str, Any]
) -> None:
    theirs = _foreign_job(dlinfra_app)
    status, listed = await api("GET", "jobs?user=*")
    assert status == 200 and [j["user"] for j in listed["jobs"]] == ["bob"]
    status, cancelled = await api("DELETE", f"jobs/{theirs.id}")
    assert status == 200 and cancelled["state"] == "cancelled"
    assert cancelled["reason"] == "cancelled by alice"


async def test_a_kernel_token_cannot_touch_jobs(
    api: Api, dlinfra_app: Any, jp_root_dir: Path
) -> None:
    register(dlinfra_app, "k-1", token="kernel-secret")
    write_notebook(jp_root_dir / "from-kernel.ipynb", "print(1)")
    headers = {"Authorization": "DLInfra-Kernel kernel-secret"}
    status, job = await api("POST", "jobs", {"path": "from-kernel.ipynb"})
    assert status == 201
    for method, path, body in (
        ("POST", "jobs", {"path": "from-kernel.ipynb"}),
        ("GET", "jobs", None),
        ("GET", f"jobs/{job['id']}", None),
        ("GET", f"jobs/{job['id']}/log", None),
        ("DELETE", f"jobs/{job['id']}", None),
        ("POST", f"jobs/{job['id']}/rerun", {}),
        ("GET", "backends", None),
    ):
        status, err = await api(method, path, body, headers=headers)
        assert status == 403 and "not by a kernel's token" in err["message"], (method, path)
    assert len(dlinfra_app.service.jobs.book.jobs()) == 1


async def test_the_log_follows_from_an_offset(
    api: Api, dlinfra_app: Any, jp_root_dir: Path
) -> None:
    write_notebook(jp_root_dir / "talk.ipynb", "print('hello from the job')")
    status, job = await api("POST", "jobs", {"path": "talk.ipynb"})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        await dlinfra_app.service.jobs_pass()
        status, current = await api("GET", f"jobs/{job['id']}")
        if current["state"] not in ("queued", "running"):
            break
        assert loop.time() < deadline, current
        await asyncio.sleep(0.1)
    assert current["state"] == "succeeded", current
    status, whole = await api("GET", f"jobs/{job['id']}/log")
    assert whole["complete"] and "hello from the job" in whole["text"]
    middle = whole["text"].index("hello")
    offset = len(whole["text"][:middle].encode())
    status, tail = await api("GET", f"jobs/{job['id']}/log?offset={offset}")
    assert tail["text"].startswith("hello from the job") and tail["offset"] == offset
    status, err = await api("GET", f"jobs/{job['id']}/log?offset=-1")
    assert status == 400 and err["reason"] == "bad_query"


async def test_a_gpu_kernelspec_gives_the_job_its_gpus_and_a_plain_kernel(
    api: Api, jp_root_dir: Path, jp_data_dir: Path
) -> None:
    import json
    import shutil

    from jupyter_dlinfra.testing.server import notebook_json

    # the server's kernelspecs live in pytest-jupyter's data dir: install ours there
    repo = Path(__file__).resolve().parents[2]
    shutil.copytree(repo / "kernels" / "python3-2gpu", jp_data_dir / "kernels" / "python3-2gpu")

    notebook = notebook_json("print(1)")
    notebook["metadata"]["kernelspec"] = {
        "name": "python3-2gpu",
        "display_name": "Python 3 (2 GPUs)",
        "language": "python",
    }
    (jp_root_dir / "spec.ipynb").write_text(json.dumps(notebook))
    status, job = await api("POST", "jobs", {"path": "spec.ipynb"})
    assert status == 201 and job["gpus"] == 2, job
    spec = json.loads((jp_root_dir / job["workdir"] / "spec.json").read_text())
    # in a job the GPUs come with the job: the kernel needs no provisioner (nor a server)
    assert spec["kernel_name"] == "python3"


async def test_gpus_no_wait_could_grant_are_refused_at_submission(
    api: Api, dlinfra_app: Any, jp_root_dir: Path
) -> None:
    write_notebook(jp_root_dir / "greedy.ipynb", "%gpu 8", "print(1)")
    status, err = await api("POST", "jobs", {"path": "greedy.ipynb"})
    assert status == 400 and err["reason"] == "too_many", err
    status, err = await api("POST", "jobs", {"path": "greedy.ipynb", "gpus": 1, "model": "V100"})
    assert status == 400 and err["reason"] == "unknown_model", err
    assert dlinfra_app.service.jobs.book.jobs() == []


def test_log_chunks_never_cut_a_character(tmp_path: Path) -> None:
    from jupyter_dlinfra.server.handlers.jobs import _read_from

    log = tmp_path / "job.log"
    log.write_bytes("ab€é".encode())  # € is 3 bytes, é 2
    assert _read_from(log, 0, 4) == (0, b"ab", 7)  # not the first byte of the €
    assert _read_from(log, 2, 4) == (2, "€".encode(), 7)
    assert _read_from(log, 5, 4) == (5, "é".encode(), 7)
    assert _read_from(log, 99, 4) == (7, b"", 7)


async def test_a_kernel_cannot_take_a_jobs_name_or_its_gpus(
    jp_fetch: Any, api: Api, dlinfra_app: Any
) -> None:
    from tornado.httpclient import HTTPClientError

    from jupyter_dlinfra.core.books.jobs import JOB_KERNEL_NAME

    ledger = dlinfra_app.service.ledger
    register(dlinfra_app, "job-7", kernel_name=JOB_KERNEL_NAME)
    held = ledger.request(kernel_id="job-7", count=2)
    import json

    # clients choose kernel ids: one named after a job must not start, nor free the job's GPUs
    with pytest.raises(HTTPClientError):
        await jp_fetch(
            "api",
            "kernels",
            method="POST",
            body=json.dumps({"name": "python3", "kernel_id": "job-7"}),
        )
    assert ledger.allocation(held.id).state.value == "granted"
    assert ledger.kernel("job-7").kernel_name == JOB_KERNEL_NAME


async def test_a_rerun_runs_the_snapshot_not_the_edited_notebook(
    api: Api, dlinfra_app: Any, jp_root_dir: Path
) -> None:
    import json

    write_notebook(jp_root_dir / "v.ipynb", "print('version one')")
    status, first = await api("POST", "jobs", {"path": "v.ipynb"})
    write_notebook(jp_root_dir / "v.ipynb", "print('version two')")
    status, again = await api("POST", f"jobs/{first['id']}/rerun", {})
    assert status == 201, again
    prepared = json.loads((jp_root_dir / again["workdir"] / "input.ipynb").read_text())
    assert "version one" in "".join(prepared["cells"][0]["source"])
    assert again["workdir"] != first["workdir"]


@pytest.mark.parametrize(
    ("path", "words"),
    [("a\x00b.ipynb", "cannot be used"), ("x" * 300 + ".ipynb", "no notebook")],
)
async def test_odd_paths_are_client_errors(api: Api, path: str, words: str) -> None:
    status, err = await api("POST", "jobs", {"path": path})
    assert status in (400, 404) and words in err["message"], err


@pytest.mark.parametrize("raw", ["²", "١٢", "9" * 30])
async def test_odd_job_ids_are_400(api: Api, raw: str) -> None:
    status, err = await api("GET", f"jobs/{raw}")
    assert status == 400 and err["reason"] == "bad_id", err


async def test_a_jobs_allocation_is_freed_by_cancelling_the_job_only(
    api: Api, dlinfra_app: Any
) -> None:
    from jupyter_dlinfra.core.books.jobs import JOB_KERNEL_NAME

    ledger = dlinfra_app.service.ledger
    register(dlinfra_app, "job-3", kernel_name=JOB_KERNEL_NAME)
    held = ledger.request(kernel_id="job-3", count=1)
    status, err = await api("DELETE", f"allocations/{held.id}")
    assert status == 409 and err["reason"] == "job_allocation", err
    assert ledger.allocation(held.id).state.value == "granted"
