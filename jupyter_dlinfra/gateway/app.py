"""``jupyter dlinfra gateway``: the team's one server for kernels, jobs and the GPU ledger.

It is jupyter_server itself, with the dlinfra extension in gateway mode, people's tokens for
identity (:class:`.identity.GatewayIdentityProvider`) and an authoriser that opens only what a
gateway serves: kernels, kernel specs and ``/dlinfra``. Files, terminals and sessions on the
gateway's own disk stay closed to everyone but admins. Every option of jupyter_server and of the
extension (``--DLInfra.db_url``, ``--DLInfra.job_backends``, ``--DLInfra.kernel_backend``...)
works on its command line and in ``jupyter_server_config.py``.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.serverapp import ServerApp
from traitlets import default

from jupyter_dlinfra.gateway.identity import GatewayIdentityProvider
from jupyter_dlinfra.server.identity import Directory

__all__ = ["GatewayApp", "GatewayAuthorizer", "main"]

#: what any person may use on the gateway (jupyter_server's auth resources)
OPEN_RESOURCES = frozenset({"kernels", "kernelspecs", "dlinfra", "api"})


class GatewayAuthorizer(Authorizer):  # type: ignore[misc]
    """Kernels and the GPU API for everyone with a token; the rest for admins only."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        if resource in OPEN_RESOURCES:
            return True
        directory: Directory | None = handler.settings.get("dlinfra_directory")
        name = getattr(user, "username", None)
        return bool(directory is not None and name and directory.is_admin(name))


class GatewayApp(ServerApp):  # type: ignore[misc]
    name = "jupyter-dlinfra-gateway"
    description = "The team gateway: kernels, jobs and the GPU ledger for everyone's JupyterLab."

    @default("identity_provider_class")
    def _default_identity(self) -> type:
        return GatewayIdentityProvider

    @default("authorizer_class")
    def _default_authorizer(self) -> type:
        return GatewayAuthorizer

    @default("open_browser")
    def _default_open_browser(self) -> bool:
        return False

    @default("jpserver_extensions")
    def _default_extensions(self) -> dict[str, bool]:
        return {"jupyter_dlinfra": True}

    def initialize(
        self,
        argv: list[str] | None = None,
        find_extensions: bool = True,
        new_httpserver: bool = True,
        starter_extension: Any = None,
    ) -> None:
        # the extension reads this at load: callers are told apart by token, kernels by owner
        self.config.DLInfra.gateway = True
        super().initialize(argv, find_extensions, new_httpserver, starter_extension)


def main(argv: list[str] | None = None) -> None:
    GatewayApp.launch_instance(argv=argv)
