"""Who is calling: a person through jupyter_server's identity provider, or a kernel by its token.

A kernel's token is issued by the provisioner at launch and stored hashed in the ledger; it acts
for that kernel only (see ``DLInfraHandler.kernel_scope``). People are authorised by the server's
configured authorizer, on the resource ``dlinfra``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from http.client import responses
from typing import Any, TypeVar, cast

import orjson
from jupyter_core.utils import ensure_async
from jupyter_server.auth.identity import User
from jupyter_server.base.handlers import APIHandler
from tornado import web

from jupyter_dlinfra.core.errors import LedgerError
from jupyter_dlinfra.core.models import KernelCaller
from jupyter_dlinfra.server.errors import ApiError, from_database_error, from_ledger_error
from jupyter_dlinfra.server.identity import Directory
from jupyter_dlinfra.server.parsing import MAX_BODY_BYTES, parse_json_object
from jupyter_dlinfra.server.service import GpuService

__all__ = ["KERNEL_AUTH_SCHEME", "DLInfraHandler", "authorized"]

KERNEL_AUTH_SCHEME = "DLInfra-Kernel"

F = TypeVar("F", bound=Callable[..., Awaitable[None]])


class DLInfraHandler(APIHandler):  # type: ignore[misc]
    auth_resource = "dlinfra"
    #: the kernel a kernel token acts for, and its user, as the token was checked; None when a
    #: person calls
    kernel_caller: KernelCaller | None = None

    @property
    def kernel_scope(self) -> str | None:
        """The kernel id a kernel token acts for; None when a person calls."""
        return self.kernel_caller.kernel_id if self.kernel_caller is not None else None

    @property
    def service(self) -> GpuService:
        return cast(GpuService, self.settings["dlinfra_service"])

    @property
    def directory(self) -> Directory:
        return cast(Directory, self.settings["dlinfra_directory"])

    def person(self) -> str:
        """The name the ledger knows the caller by: a kernel's owner, else this server's owner.

        On a personal server whoever logs in acts as its owner; the identity provider's own name
        (JupyterHub's user) counts too for admin checks, see :meth:`is_admin`. On a gateway
        (``multi_user``) the caller is whoever their token names.
        """
        if self.current_user is not None and (
            self.kernel_scope is not None or self.service.settings.multi_user
        ):
            return str(self.current_user.username)
        return self.service.settings.user

    def is_admin(self) -> bool:
        """Admins change the policy; a kernel's token never is one."""
        if self.kernel_scope is not None:
            return False
        names = set() if self.service.settings.multi_user else {self.service.settings.user}
        user = self.current_user
        if user is not None and getattr(user, "username", None):
            names.add(user.username)
        return any(self.directory.is_admin(name) for name in names)

    def compute_etag(self) -> str | None:
        # an answer is the ledger as of now and changes with every change: tornado's default
        # hashes each body for a 304 that no client of this API asks for (the views of a
        # sidebar run to hundreds of kilobytes)
        return None

    def _kernel_token(self) -> str | None:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == KERNEL_AUTH_SCHEME.lower() and token.strip():
            return token.strip()
        return None

    async def prepare(self) -> None:  # type: ignore[override]
        token = self._kernel_token()
        if token is None:
            await super().prepare()
            return
        if not self.check_host():
            raise web.HTTPError(403)
        try:
            caller = await self.service.kernel_for_token(token)
        except LedgerError as err:  # the database is away: 503, not a traceback
            raise from_ledger_error(err) from err
        if caller is None:
            raise ApiError(
                403,
                "this kernel's dlinfra token is not valid any more (was the kernel restarted "
                "by another server?)",
                code="bad_kernel_token",
            )
        user = User(username=caller.user, name=caller.user, display_name=caller.user)
        self.current_user = self._jupyter_current_user = user
        self.kernel_caller = caller

    def check_xsrf_cookie(self) -> None:
        # a kernel token travels in a header a browser cannot forge cross-site
        if self.kernel_scope is not None or self._kernel_token() is not None:
            return None
        super().check_xsrf_cookie()
        return None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if exc is not None and not isinstance(exc, web.HTTPError):
            # a database that is away, from a path that did not map it (tornado has logged it)
            exc = from_database_error(exc) or exc
            if isinstance(exc, ApiError):
                self.set_status(exc.status_code)
        if isinstance(exc, ApiError):
            if exc.retry_after is not None:
                self.set_header("Retry-After", str(exc.retry_after))
            body = {"message": exc.message, "reason": exc.code}
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message % exc.args if exc.log_message else None
            body = {
                "message": message or responses.get(status_code, "error"),
                "reason": exc.reason or responses.get(status_code, "error").lower(),
            }
        else:
            body = {"message": "internal error; the server log has details", "reason": "internal"}
        self.finish(json.dumps(body))

    # -- helpers for the handlers ------------------------------------------------------------

    def json_body(self, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
        """The body: a JSON object within the bounds of :func:`.parsing.parse_json`."""
        return parse_json_object(self.request.body, max_bytes=max_bytes)

    def own_kernel(self, kernel_id: str, owner: str) -> None:
        """Refuse to act for a kernel the caller does not own."""
        if self.kernel_scope is not None:
            if kernel_id != self.kernel_scope:
                raise ApiError(403, "a kernel's token acts only for that kernel", code="forbidden")
        elif owner != self.person() and not self.is_admin():
            raise ApiError(403, f"kernel {kernel_id} belongs to {owner}", code="forbidden")

    def answer(self, body: dict[str, Any], status: int = 200) -> None:
        body.setdefault("simulated", self.service.provider.simulated)
        self.set_status(status)
        self.finish(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS))


def authorized(action: str) -> Callable[[F], F]:
    """Authenticate, authorise, and turn domain errors into JSON answers, for one method."""

    def decorate(method: F) -> F:
        @web.authenticated  # type: ignore[untyped-decorator]
        @functools.wraps(method)
        async def wrapper(self: DLInfraHandler, *args: Any, **kwargs: Any) -> None:
            if self.kernel_scope is None:
                allowed = await ensure_async(
                    self.authorizer.is_authorized(
                        self, self.current_user, action, self.auth_resource
                    )
                )
                if not allowed:
                    raise ApiError(
                        403,
                        f"you are not allowed to {action} {self.auth_resource}",
                        code="forbidden",
                    )
            try:
                await method(self, *args, **kwargs)
            except LedgerError as err:
                raise from_ledger_error(err) from err
            except Exception as err:
                # the database away, reached other than through the service (which maps it)
                mapped = from_database_error(err)
                if mapped is None:
                    raise
                raise mapped from err

        return cast(F, wrapper)

    return decorate
