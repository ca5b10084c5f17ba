"""Lists of names on a server's command line, read the way a person writes them."""

from __future__ import annotations

import ast
from typing import Any

from traitlets import TraitError

__all__ = ["read_list_literal"]


def read_list_literal(proposal: dict[str, Any]) -> list[str]:
    """``--DLInfra.admin_users="['alice', 'bob']"`` on a server's command line: traitlets
    reads the option before it knows the extension's classes, and its later conversion
    fails for a list of strings, leaving the whole literal as the one item."""
    value = list(proposal["value"])
    if len(value) != 1 or not (value[0].startswith("[") and value[0].endswith("]")):
        return value
    name = proposal["trait"].name
    try:
        parsed = ast.literal_eval(value[0])
    except (ValueError, SyntaxError):
        raise TraitError(
            f"DLInfra.{name}: cannot read {value[0]!r} as a list of names; write "
            f"--DLInfra.{name}=alice --DLInfra.{name}=bob, or \"['alice', 'bob']\""
        ) from None
    if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
        raise TraitError(f"DLInfra.{name} must be a list of names, not {value[0]}")
    return parsed
