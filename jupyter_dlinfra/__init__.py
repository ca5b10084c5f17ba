"""GPU sharing for deep-learning teams inside Jupyter.

Importing this package stays cheap: kernels load it for ``%gpu``, so the server side is imported
only by the hooks that need it.
"""

from __future__ import annotations

from typing import Any

from jupyter_dlinfra._version import __version__

__all__ = ["__version__", "load_ipython_extension"]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from jupyter_dlinfra.server.app import DLInfra

    return [{"module": "jupyter_dlinfra", "app": DLInfra}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_dlinfra`` (the provisioner loads it for you): registers ``%gpu``."""
    from jupyter_dlinfra.kernel.magics import register

    register(ipython)
