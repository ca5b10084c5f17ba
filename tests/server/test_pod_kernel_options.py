"""The options of pod kernels that the wiring reads itself (not the pod launcher's)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from traitlets import TraitError

from jupyter_dlinfra.server import wiring
from jupyter_dlinfra.server.pod_kernels import BIND_TIMEOUT_S


def pods(**kernel_pods: Any) -> Any:
    options = SimpleNamespace(
        gateway=True,
        kernel_pods={"namespace": "ml", "kubeconfig": "/nonexistent", **kernel_pods},
        cluster_telemetry={"kubeconfig": "/nonexistent"},
    )
    return wiring._kernel_pods(options, lambda kube: {})  # type: ignore[arg-type]


def test_the_bind_timeout_of_admitted_gpu_pods_is_read_and_checked() -> None:
    assert pods().bind_timeout == BIND_TIMEOUT_S == 45.0
    assert pods(bind_timeout_s=10).bind_timeout == 10.0
    for bad in (0, -1, "soon", True):
        with pytest.raises(TraitError, match="bind_timeout_s must be seconds above 0"):
            pods(bind_timeout_s=bad)
