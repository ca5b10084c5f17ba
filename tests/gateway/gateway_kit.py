"""A team gateway for the tests, on loopback: start one, call it as a person, keep its log.

A module of its own (not conftest.py), so that tests import it by a name no other directory
uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_dlinfra.core.books.tokens import TokenBook
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.store import Store
from jupyter_dlinfra.testing.server import ServerProcess

GATEWAY = ("-m", "jupyter_dlinfra.cli", "gateway")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@dataclass
class Team:
    db_url: str
    tokens: dict[str, str]
    gateway: ServerProcess
    book: TokenBook

    def as_user(self, user: str) -> dict[str, str]:
        return {"Authorization": f"token {self.tokens[user]}"}

    def call(self, user: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, payload, _ = self.gateway.request(method, path, body, headers=self.as_user(user))
        return status, payload


def start_gateway(
    tmp_path: Path, *, args: tuple[str, ...] = (), gpus: int = 4, config: str = ""
) -> Team:
    db_url = f"sqlite:///{tmp_path}/team.sqlite"
    book = TokenBook(Store(db_url), SystemClock())
    tokens = {u: book.issue(u, by="test").token for u in ("alice", "bob", "admin")}
    workdir = tmp_path / "gateway"
    workdir.mkdir()
    if config:
        # ServerProcess points JUPYTER_CONFIG_DIR here: the options dicts are clearer in a file
        (workdir / "config").mkdir()
        (workdir / "config" / "jupyter_dlinfra_gateway_config.py").write_text(config)
    gateway = ServerProcess(
        workdir,
        db_url=db_url,
        simulated_gpus=gpus,
        token=tokens["admin"],
        program=GATEWAY,
        extra_args=(
            "--DLInfra.admin_users=admin",
            "--DLInfra.job_interval=0.2",
            "--DLInfra.reconcile_interval=1",
            *args,
        ),
    )
    gateway.start()
    return Team(db_url=db_url, tokens=tokens, gateway=gateway, book=book)


def stop_and_keep_log(server: ServerProcess) -> None:
    server.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / server.log_path.name).write_text(server.log_text())
