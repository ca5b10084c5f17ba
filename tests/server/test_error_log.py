"""What the server log says about an API error: the message as the caller got it."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from server_kit import register


async def test_a_refusal_is_logged_with_the_words_it_was_answered_with(
    api: Any, dlinfra_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    register(dlinfra_app, "k")
    await api("POST", "allocations", {"kernel_id": "k", "count": 1})
    caplog.set_level(logging.WARNING)
    status, body = await api("POST", "allocations", {"kernel_id": "k", "count": 2})
    assert status == 409 and "`%gpu release`" in body["message"]
    logged = [r.getMessage() for r in caplog.records if "release them first" in r.getMessage()]
    # tornado 6.5 stopped %-formatting a log message given without arguments: escaping the
    # message for it left "%%gpu" in the log
    assert len(logged) == 1 and logged[0].endswith(body["message"]), logged
