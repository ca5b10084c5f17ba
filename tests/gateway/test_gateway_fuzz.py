"""Schemathesis over the gateway's owner-checked kernel API (api/gateway-kernels.yaml).

A real ``jupyter dlinfra gateway`` on loopback, called as a person and as an admin, with the same
checks as the ledger API's fuzz (tests/server/test_fuzz_api.py): no 5xx, documented statuses
and content types, bodies the schemas accept. Valid starts start real kernels, so the example
count is small and each kernel started is shut down at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fuzz_kit import CHECKS, fuzzed
from gateway_kit import Team, start_gateway, stop_and_keep_log

MAX_EXAMPLES = 15


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    started = start_gateway(tmp_path_factory.mktemp("gateway-fuzz"))
    try:
        # someone else's kernel: alice may not see or touch it
        status, _ = started.call("bob", "POST", "api/kernels", {"name": "python3"})
        assert status == 201
        yield started
    finally:
        stop_and_keep_log(started.gateway)


schema = fuzzed("gateway-kernels.yaml", max_examples=MAX_EXAMPLES)


@pytest.mark.parametrize("user", ["alice", "admin"])
@schema.parametrize()
def test_every_kernel_answer_is_as_the_document_says(case: Any, team: Team, user: str) -> None:
    response = case.call_and_validate(
        base_url=team.gateway.url.rstrip("/"), headers=team.as_user(user), checks=CHECKS
    )
    if case.method == "POST" and case.path == "/api/kernels" and response.status_code == 201:
        # dozens of valid starts: each kernel goes at once rather than at the gateway's stop
        status, _ = team.call(user, "DELETE", f"api/kernels/{response.json()['id']}")
        assert status == 204
