"""What callers send, read within bounds: JSON bodies, ids, numbers, names; and how it is quoted.

Every handler reads its input through these functions, so that hostile input meets one set of
rules rather than one per handler: a body is a JSON object of bounded size and depth whose
integers fit SQL's ``bigint`` and whose other numbers are finite; ids in paths are ASCII digits
(``str.isdigit`` and ``int`` also take ``"٣"`` and ``"²"``) that fit ``bigint``; names fit the
ledger's columns. Errors quote what was sent through :func:`shown`, so that a megabyte of input
is neither echoed back whole nor logged whole (tornado logs each error's message).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

from jupyter_dlinfra.core.quoting import shown
from jupyter_dlinfra.server.errors import ApiError

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_COUNT",
    "MAX_DEPTH",
    "MAX_ID",
    "MAX_NAME",
    "BadJson",
    "json_field_int",
    "json_field_name",
    "kernel_id_of",
    "parse_json",
    "parse_json_object",
    "path_id",
    "query_int",
    "query_name",
    "query_number",
    "shown",
]

#: the largest id SQL's ``bigint`` (and SQLite's INTEGER) holds
MAX_ID = 2**63 - 1
#: the largest request body read as JSON, unless a handler allows more (a job's submission
#: holds its notebook when a person's server forwards it to the gateway)
MAX_BODY_BYTES = 4 * 2**20
#: containers nested deeper than this are refused (notebooks nest about 6 deep)
MAX_DEPTH = 64
#: a GPU count beyond any cluster's size (so that it fits every column and sum)
MAX_COUNT = 65536
#: user, group, model and class names: as the ledger's columns hold them
MAX_NAME = 255
#: kernel ids: as the ledger's column holds them (Jupyter's are UUIDs, 36 characters)
MAX_KERNEL_ID = 64

_ASCII_ID = re.compile(r"[0-9]{1,19}")
# C0 controls and DEL: a NUL is refused by PostgreSQL, the rest make unreadable names and logs
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# -- JSON ----------------------------------------------------------------------------------------


class BadJson(ValueError):
    """A request body that is not JSON within bounds; the message says what to change."""


def _refuse(message: str) -> NoReturn:
    raise BadJson(message)


def _parse_int(text: str) -> int:
    # the length first: int() of thousands of digits costs (and Python refuses 4300)
    if len(text) > 20 or abs(value := int(text)) > MAX_ID:
        _refuse(
            f"the integer {shown(text, 30)} is out of range: integers are between "
            f"{-MAX_ID} and {MAX_ID}"
        )
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        _refuse(f"the number {shown(text, 30)} is out of range for a double")
    return value


def _parse_constant(text: str) -> NoReturn:
    _refuse(f"{text} is not JSON (numbers are finite)")


def parse_json(raw: bytes | str, *, max_bytes: int = MAX_BODY_BYTES) -> Any:
    """Parse a request body, within size and depth; raises :class:`BadJson`.

    Integers are within ``±MAX_ID``; other numbers are finite; no string holds an unpaired
    surrogate (``"\\ud800"``: it cannot be stored or encoded again).
    """
    if len(raw) > max_bytes:
        _refuse(f"the request body has {len(raw)} bytes; this call takes at most {max_bytes}")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as err:
        raise BadJson(f"the request body is not UTF-8: {err.reason} at byte {err.start}") from None
    try:
        value = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except RecursionError:
        _refuse(f"the request body nests deeper than {MAX_DEPTH} levels")
    except BadJson:
        raise
    except ValueError as err:
        # the decoder's message quotes no input, only where the error is
        raise BadJson(f"the request body is not valid JSON: {shown(str(err), 200)}") from None
    _check_nesting(value)
    return value


def _check_nesting(value: Any) -> None:
    if isinstance(value, str):
        _check_text(value)
    if not isinstance(value, (dict, list)):
        return
    # only containers are stacked: a body of a million numbers costs no million entries here
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            _refuse(f"the request body nests deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            for key in item:
                _check_text(key)
            children: Any = item.values()
        else:
            children = item
        for child in children:
            if isinstance(child, str):
                _check_text(child)
            elif isinstance(child, (dict, list)):
                stack.append((child, depth + 1))


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            _refuse(f"the string {shown(text)} has an unpaired surrogate (\\ud800-\\udfff)")


def parse_json_object(raw: bytes | str, *, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """A body that must be a JSON object (an empty one reads as ``{}``); raises ApiError."""
    try:
        body = parse_json(raw or "{}", max_bytes=max_bytes)
    except BadJson as err:
        raise ApiError(400, str(err), code="bad_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="bad_json")
    return body


# -- paths and queries ---------------------------------------------------------------------------


def path_id(raw: str, what: str) -> int:
    """An id in a path, as the API document says: ASCII digits, at most ``MAX_ID``."""
    if not _ASCII_ID.fullmatch(raw) or int(raw) > MAX_ID:
        raise ApiError(
            400,
            f"{what} id must be a whole number from 0 to {MAX_ID} in ASCII digits, "
            f"not {shown(raw)}",
            code="bad_id",
        )
    return int(raw)


def kernel_id_of(raw: Any, *, where: str = "kernel id") -> str:
    """A kernel id from a path, a query or a body: a string the ledger's column can hold."""
    if not isinstance(raw, str) or not raw:
        raise ApiError(400, f"{where} must be a non-empty string", code="bad_id")
    if len(raw) > MAX_KERNEL_ID or _CONTROL.search(raw):
        raise ApiError(
            400,
            f"{where} must be at most {MAX_KERNEL_ID} printable characters (Jupyter's kernel "
            f"ids are UUIDs), not {shown(raw)}",
            code="bad_id",
        )
    return raw


def query_name(raw: str | None, what: str) -> str | None:
    """A name in a query (a user, a kernel): at most ``MAX_NAME`` printable characters."""
    if raw is None:
        return None
    if len(raw) > MAX_NAME or _CONTROL.search(raw):
        raise ApiError(
            400,
            f"{what} must be at most {MAX_NAME} printable characters, not {shown(raw)}",
            code="bad_query",
        )
    return raw


def query_int(raw: str, what: str, *, minimum: int, maximum: int) -> int:
    """A whole number in a query, in ASCII digits, within ``[minimum, maximum]``."""
    if not _ASCII_ID.fullmatch(raw) or not minimum <= int(raw) <= maximum:
        raise ApiError(
            400,
            f"{what} must be a whole number from {minimum} to {maximum}, not {shown(raw)}",
            code="bad_query",
        )
    return int(raw)


def query_number(raw: str, what: str, *, minimum: float, maximum: float, unit: str = "") -> float:
    """A number in a query, finite and within ``[minimum, maximum]``."""
    try:
        value = float(raw) if len(raw) <= 32 else math.nan
    except ValueError:
        value = math.nan
    if not minimum <= value <= maximum:  # NaN fails both comparisons
        raise ApiError(
            400,
            f"{what} must be a number from {minimum:g} to {maximum:g}{unit}, not {shown(raw)}",
            code="bad_query",
        )
    return value


# -- fields of a JSON body -----------------------------------------------------------------------


def json_field_int(
    body: dict[str, Any],
    key: str,
    *,
    minimum: int,
    maximum: int,
    example: str = "",
) -> int | None:
    """A whole number field (``2`` and ``2.0`` alike), within bounds; None when absent or null."""
    value = body.get(key)
    if value is None:
        return None
    hint = f", such as {example}" if example else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ApiError(
            400, f"{key} must be a whole number{hint}, not {shown(value)}", code="bad_field"
        )
    if not minimum <= value <= maximum:
        raise ApiError(
            400,
            f"{key} must be a whole number from {minimum} to {maximum}, not {shown(value)}",
            code="bad_field",
        )
    return int(value)


def json_field_name(
    body: dict[str, Any], key: str, *, what: str, limit: int = MAX_NAME
) -> str | None:
    """A name field (a model, a class): a non-blank printable string, or None when absent/null."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{key} must be {what}, or null", code="bad_field")
    if len(value) > limit or _CONTROL.search(value):
        raise ApiError(
            400,
            f"{key} must be at most {limit} printable characters, not {shown(value)}",
            code="bad_field",
        )
    return value
