"""jupyter_server's request log, without the cost of the lines that nobody sees.

jupyter_server logs each successful answer at debug level, and its application's logger lets
every level through to its handlers, which drop debug lines unless the server runs with
``--debug``: so each answer formats its line and makes a log record only for them to be dropped.
At a team gateway's hundreds of answers a second that was 3 to 6 % of its CPU. The wrapper skips
such a line when no handler would show it, and does the rest as jupyter_server does (the
request-duration metric of every answer, the lines of redirects, refusals and errors).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from jupyter_server.log import log_request
from jupyter_server.prometheus.log_functions import prometheus_log_method
from tornado.log import access_log

__all__ = ["quiet_request_log", "shows"]

LogFunction = Callable[[Any], None]


def shows(logger: logging.Logger, level: int) -> bool:
    """Whether a record of ``level`` logged to ``logger`` reaches a handler that emits it."""
    if not logger.isEnabledFor(level):
        return False
    found = False
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            found = True
            if level >= handler.level:
                return True
        if not current.propagate:
            break
        current = current.parent
    last = logging.lastResort
    return not found and last is not None and level >= last.level


def quiet_request_log(log_function: LogFunction) -> LogFunction:
    """``log_function`` (jupyter_server's ``log_request``, as its server sets it) made to skip
    the debug lines of successful answers that no handler shows; any other function as it is
    (someone configured their own)."""
    if not (isinstance(log_function, functools.partial) and log_function.func is log_request):
        return log_function
    metrics = bool(log_function.keywords.get("record_prometheus_metrics", True))

    def log(handler: Any) -> None:
        status = handler.get_status()
        if status < 300 or status == 304:  # the lines jupyter_server logs at debug level
            logger = getattr(handler, "log", access_log)
            if not shows(logger, logging.DEBUG):
                if metrics:
                    prometheus_log_method(handler)  # type: ignore[no-untyped-call]
                return
        log_function(handler)

    return log
