"""What the API fuzz tests share: Schemathesis's checks, a fixed seed, a deterministic schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

API = Path(__file__).resolve().parents[1] / "api"
#: no 5xx, documented statuses and content types, bodies the schemas accept
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SEED = 20240513


def fuzzed(spec: str, *, max_examples: int) -> Any:
    """The operations of ``api/<spec>``, each tried ``max_examples`` times, the same every run."""
    return schemathesis.openapi.from_path(
        API / spec,
        config=schemathesis.Config.from_dict(
            {
                "seed": SEED,
                "generation": {
                    "max-examples": max_examples,
                    "deterministic": True,
                    "database": "none",
                },
            }
        ),
    )
