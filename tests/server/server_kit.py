"""Helpers shared by the server tests."""

from __future__ import annotations

from typing import Any

from jupyter_dlinfra.core.models import KernelRecord
from jupyter_dlinfra.server.launches import hash_token


def register(
    app: Any,
    kernel_id: str,
    *,
    user: str | None = None,
    token: str | None = None,
    kernel_name: str = "",
) -> KernelRecord:
    """A kernel record as the provisioner (or, with the job kernel name, the job loop) writes it.

    No process is needed for API checks.
    """
    service = app.service
    record: KernelRecord = service.ledger.register_kernel(
        KernelRecord(
            kernel_id=kernel_id,
            user=user or service.settings.user,
            node=service.settings.node,
            server_id=service.settings.server_id,
            kernel_name=kernel_name,
        ),
        token_hash=hash_token(token) if token else None,
    )
    return record
