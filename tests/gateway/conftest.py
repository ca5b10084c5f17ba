"""A team gateway and people's own Jupyter servers pointed at it, all real, on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gateway_kit import Team, start_gateway, stop_and_keep_log

from jupyter_dlinfra.testing.server import ServerProcess


@pytest.fixture
def team(tmp_path: Path) -> Iterator[Team]:
    started = start_gateway(tmp_path)
    try:
        yield started
    finally:
        # after the people's servers (their fixture ends first): they shut their kernels down
        stop_and_keep_log(started.gateway)


@pytest.fixture
def user_server(team: Team, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """A person's own Jupyter server, started with --gateway-url and their gateway token."""
    started: list[ServerProcess] = []

    def start(user: str, *, token: str | None = None) -> ServerProcess:
        workdir = tmp_path / f"server-{user}"
        workdir.mkdir(exist_ok=True)
        server = ServerProcess(
            workdir,
            # never opened: a server that forwards to a gateway keeps no ledger
            db_url=f"sqlite:///{workdir}/unused.sqlite",
            extra_args=(
                f"--gateway-url={team.gateway.url}",
                f"--GatewayClient.auth_token={token or team.tokens[user]}",
            ),
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        stop_and_keep_log(server)
