"""Helpers of the job backends' tests: launches in a test's directory, polling a backend until
its jobs get somewhere, and, for the Kubernetes ones, a request-counting API client."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import kubernetes.client
import psutil

from jupyter_dlinfra.backends import BackendStatus, JobBackend, JobHandle, JobLaunch
from jupyter_dlinfra.testing.server import wait_until

__all__ = ["DEADLINE", "Counting", "Jobs", "alive", "wait_ended", "wait_for", "wait_reason"]

#: how long a wait polls the backend by default (seconds)
DEADLINE = 30.0


class Jobs:
    """Makes launches whose job directories live under ``root``; ``command(text)`` is the argv
    of ``launch(text)``."""

    def __init__(self, root: Path, command: Callable[[str], list[str]], *, user: str) -> None:
        self.root = root
        self.command = command
        self.user = user
        self.count = 0

    def launch(self, text: str, **kwargs: Any) -> JobLaunch:
        self.count += 1
        # unique, as the server's are: SLURM recovers a job by its id and directory's name, and
        # remembers the ended jobs of earlier tests
        workdir = self.root / f"{self.count}-job-{secrets.token_hex(4)}"
        workdir.mkdir()
        fields: dict[str, Any] = {
            "job_id": self.count,
            "name": f"test job {self.count}",
            "user": self.user,
            "workdir": str(workdir),
            "argv": self.command(text),
            "log_path": str(workdir / "job.log"),
        }
        fields.update(kwargs)
        return JobLaunch(**fields)


def wait_for(
    backend: JobBackend,
    handles: Sequence[JobHandle],
    done: Callable[[dict[str, BackendStatus]], bool],
    what: str,
    timeout: float = DEADLINE,
) -> dict[str, BackendStatus]:
    """Poll ``handles`` every 0.1 s until ``done`` says yes; AssertionError with the last
    statuses after ``timeout``."""
    seen: list[dict[str, BackendStatus]] = []

    def check() -> dict[str, BackendStatus] | None:
        statuses = backend.poll(handles)
        seen[:] = [statuses]
        return statuses if done(statuses) else None

    try:
        found: dict[str, BackendStatus] = wait_until(
            check, timeout=timeout, interval=0.1, what=what
        )
    except TimeoutError as err:
        raise AssertionError(f"{err}; last: {seen}") from None
    return found


def wait_ended(backend: JobBackend, handle: JobHandle, timeout: float = DEADLINE) -> BackendStatus:
    return wait_for(backend, [handle], lambda s: s[handle.ref].state.ended, "the end", timeout)[
        handle.ref
    ]


def wait_reason(backend: JobBackend, handle: JobHandle, text: str, what: str) -> BackendStatus:
    """Until the job's reason says ``text``."""
    return wait_for(backend, [handle], lambda s: text in (s[handle.ref].reason or ""), what)[
        handle.ref
    ]


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Counting:
    """The real ApiClient, counting the requests that go through it (method, path)."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.calls: list[tuple[str, str]] = []
        self.api = api
        self._call_api = api.call_api

    def __enter__(self) -> Counting:
        def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            path = url.split("://", 1)[-1]
            path = "/" + path.split("/", 1)[1] if "/" in path else "/"
            self.calls.append((method, path.split("?", 1)[0]))
            return self._call_api(method, url, *args, **kwargs)

        self.api.call_api = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.api.call_api
