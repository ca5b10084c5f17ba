from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jupyter_dlinfra.testing.server import ServerProcess


@pytest.fixture
def start_server(tmp_path: Path, servers: list[object]) -> Callable[..., ServerProcess]:
    """Start a real jupyter server with the extension; all share one ledger file by default."""
    counter = iter(range(100))

    def start(
        *,
        gpus: int = 4,
        db_url: str | None = None,
        args: tuple[str, ...] = (),
        workdir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Any:
        if workdir is None:
            workdir = tmp_path / f"server{next(counter)}"
            workdir.mkdir()
        server = ServerProcess(
            workdir,
            db_url=db_url or f"sqlite:///{tmp_path}/ledger.sqlite",
            simulated_gpus=gpus,
            extra_args=("--DLInfra.reconcile_interval=1", *args),
            env=env or {},
        )
        servers.append(server)
        return server.start()

    return start


__all__ = ["start_server"]
