from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from postgres_server import PostgresUnavailable, postgres_optional, start_postgres
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

# k8s_cluster, slurm_cluster: one real Kubernetes control plane and one real SLURM per run,
# shared by every directory
pytest_plugins = ("pytest_jupyter.jupyter_server", "k8s_cluster", "slurm_cluster")

# servers started by tests pick their own GPUs; the developer's shell must not leak in
os.environ.pop("DLINFRA_SIMULATED_GPUS", None)
os.environ.pop("DLINFRA_DB_URL", None)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(autouse=True, scope="session")
def _no_gc_freeze_in_the_test_process() -> Iterator[None]:
    """Servers started in this process (pytest-jupyter) would freeze its objects at their
    first ledger load (``DLInfra.freeze_gc``): each test's server, frozen while alive, would
    then never be freed. Servers started as processes freeze as they do in use;
    tests/core/test_state_disposal.py checks what the freeze relies on."""
    from jupyter_dlinfra.core.books import ledger

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ledger, "freeze_long_lived", lambda: None)
        yield


def pytest_configure(config: pytest.Config) -> None:
    # the test apiserver's certificate is self-signed and its kubeconfig skips verification
    config.addinivalue_line("filterwarnings", "ignore::urllib3.exceptions.InsecureRequestWarning")


@pytest.fixture
def servers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[object]]:
    """Collects ServerProcess objects so that each is stopped, and its log kept; when the test
    failed, the end of each log is printed too (CI keeps only what the run prints)."""
    started: list[object] = []
    yield started
    from jupyter_dlinfra.testing.server import ServerProcess

    call = getattr(request.node, "rep_call", None)
    failed = call is not None and call.failed
    for server in started:
        assert isinstance(server, ServerProcess)
        server.stop()
        ARTIFACTS.mkdir(exist_ok=True)
        log = server.log_text()
        (ARTIFACTS / server.log_path.name).write_text(log)
        if failed:
            print(f"--- the end of {server.log_path} ---\n{log[-6000:]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One PostgreSQL server for the whole run, shared by every directory (each test takes a
    database of its own: ``fresh_postgres_db``); fails (never skips) unless told to skip."""
    try:
        with start_postgres() as url:
            yield url
    except PostgresUnavailable as err:
        if postgres_optional():
            pytest.skip(f"PostgreSQL unavailable: {err}")
        pytest.fail(f"PostgreSQL unavailable: {err}", pytrace=False)


@pytest.fixture
def fresh_postgres_db(postgres_url: str) -> Iterator[str]:
    """An empty database of its own on the session's server, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            # FILE_COPY: much quicker than the default WAL_LOG for a throw-away database
            conn.execute(text(f'CREATE DATABASE "{name}" STRATEGY = FILE_COPY'))
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
