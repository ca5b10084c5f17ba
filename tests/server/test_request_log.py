"""The request log skips the debug lines that nobody sees, and keeps everything else: a
``--debug`` server's lines, refusals' warnings, and the request-duration metric of each answer."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Fetch
from jupyter_server.prometheus.metrics import HTTP_REQUEST_DURATION_SECONDS
from tornado.httpclient import HTTPClientError

from jupyter_dlinfra.server.request_log import shows


class _Lines(logging.Filter):
    """Every record the logger handles (a filter sees a record once it was made)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.lines.append(record.getMessage())
        return True


@pytest.fixture
def lines(jp_serverapp: Any) -> Iterator[_Lines]:
    found = _Lines()
    jp_serverapp.log.addFilter(found)
    yield found
    jp_serverapp.log.removeFilter(found)


def _requests(lines: _Lines, path: str) -> list[str]:
    return [line for line in lines.lines if path in line]


@pytest.fixture
def without_debug(jp_serverapp: Any) -> Iterator[None]:
    """Every handler the server's lines reach shows INFO and above, as without ``--debug`` (the
    test run's own log capture takes every level)."""
    raised: list[tuple[logging.Handler, int]] = []
    logger: logging.Logger | None = jp_serverapp.log
    while logger is not None:
        for handler in logger.handlers:
            raised.append((handler, handler.level))
            handler.setLevel(max(handler.level, logging.INFO))
        logger = logger.parent if logger.propagate else None
    yield
    for handler, level in raised:
        handler.setLevel(level)


@pytest.mark.usefixtures("without_debug")
async def test_a_success_makes_no_line_that_no_handler_shows(
    jp_fetch: Fetch, jp_serverapp: Any, lines: _Lines
) -> None:
    assert not shows(jp_serverapp.log, logging.DEBUG)
    resp = await jp_fetch("dlinfra", "api", "queue", method="GET")
    assert resp.code == 200
    assert not _requests(lines, "/dlinfra/api/queue")
    # a refusal is still logged, as a warning
    with pytest.raises(HTTPClientError):
        await jp_fetch("dlinfra", "api", "allocations", "999999", method="GET")
    assert _requests(lines, "/dlinfra/api/allocations/999999")


async def test_a_debug_handler_still_gets_every_line(
    jp_fetch: Fetch, jp_serverapp: Any, lines: _Lines
) -> None:
    handler = logging.NullHandler()
    handler.setLevel(logging.DEBUG)
    jp_serverapp.log.addHandler(handler)
    try:
        assert shows(jp_serverapp.log, logging.DEBUG)
        await jp_fetch("dlinfra", "api", "queue", method="GET")
    finally:
        jp_serverapp.log.removeHandler(handler)
    assert _requests(lines, "/dlinfra/api/queue")


async def test_the_request_metric_counts_every_answer(jp_fetch: Fetch, jp_serverapp: Any) -> None:
    before = HTTP_REQUEST_DURATION_SECONDS.collect()[0]
    seen = sum(
        s.value
        for s in before.samples
        if s.name.endswith("_count") and s.labels.get("handler", "").endswith("QueueHandler")
    )
    await jp_fetch("dlinfra", "api", "queue", method="GET")
    after = HTTP_REQUEST_DURATION_SECONDS.collect()[0]
    now = sum(
        s.value
        for s in after.samples
        if s.name.endswith("_count") and s.labels.get("handler", "").endswith("QueueHandler")
    )
    assert now == seen + 1


def test_a_logger_without_handlers_shows_what_the_last_resort_does() -> None:
    lonely = logging.Logger("dlinfra-test-lonely")
    lonely.propagate = False
    lonely.setLevel(logging.DEBUG)
    assert not shows(lonely, logging.DEBUG)
    assert shows(lonely, logging.WARNING)
    quiet = logging.Logger("dlinfra-test-quiet")
    quiet.setLevel(logging.INFO)
    quiet.addHandler(logging.NullHandler())
    assert not shows(quiet, logging.DEBUG)
