"""Schemathesis over api/openapi.yaml, against a real server, as a user and as an admin.

Every operation of the document is called with generated requests, valid and invalid (the
examples, coverage and fuzzing phases), and each answer is checked: no 5xx, a status the document
lists for the operation, a content type it lists, and a body its schema accepts. Any finding fails
the test. The seed is fixed and the example count bounded, so a run is the same every time and
takes a minute or two on two cores.

The event stream never ends and is left out here; tests/server/test_events.py checks its content
type and frames against the document.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fuzz_kit import CHECKS, fuzzed

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.models import KernelRecord
from jupyter_dlinfra.core.store import Store
from jupyter_dlinfra.testing.server import ServerProcess

#: per operation and phase; about 30 operations, two callers
MAX_EXAMPLES = 50
OWNER = "alice"


@dataclass
class Caller:
    server: ServerProcess
    role: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.server.token}"}


def _seed_ledger(server: ServerProcess) -> None:
    """A kernel with GPUs and an ended grant, so that ids 1 and 2 name real allocations."""
    cluster = server.get("dlinfra/api/cluster")
    node = cluster["nodes"][0]["name"]
    store = Store(server.db_url)
    try:
        ledger = Ledger(store, SystemClock())
        ledger.register_kernel(
            KernelRecord(kernel_id="fuzz-kernel", user=OWNER, node=node, server_id="fuzz"),
            token_hash=None,
        )
        first = ledger.request(kernel_id="fuzz-kernel", count=1)
        ledger.release(first.id, reason="seeded")
        ledger.request(kernel_id="fuzz-kernel", count=2)
    finally:
        store.dispose()


@pytest.fixture(scope="module", params=["user", "admin"])
def caller(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Caller]:
    role = request.param
    workdir = tmp_path_factory.mktemp(f"fuzz-{role}")
    args = [f"--DLInfra.user_name={OWNER}", "--DLInfra.reconcile_interval=0"]
    if role == "admin":
        args.append(f"--DLInfra.admin_users={OWNER}")
    server = ServerProcess(
        workdir, db_url=f"sqlite:///{workdir}/ledger.sqlite", simulated_gpus=4, extra_args=args
    )
    server.start()
    try:
        _seed_ledger(server)
        yield Caller(server=server, role=role)
    finally:
        server.stop()


schema = fuzzed("openapi.yaml", max_examples=MAX_EXAMPLES).exclude(path="/dlinfra/api/events")


@schema.parametrize()
def test_every_answer_is_as_the_document_says(case: Any, caller: Caller) -> None:
    case.call_and_validate(
        base_url=caller.server.url.rstrip("/"), headers=caller.headers, checks=CHECKS
    )
