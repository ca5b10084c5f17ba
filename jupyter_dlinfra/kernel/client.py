"""The kernel's side of ``/dlinfra/api``: a small client on the standard library.

It runs inside every kernel, so it imports nothing heavy; it speaks only to the server that started
the kernel (``DLINFRA_API_URL``), with the kernel's own token. :class:`RestClient`, the JSON
transport under it, is also the base of the ``jupyter dlinfra`` command's client, so that there is
one hand-rolled urllib client in the package, not two.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import urllib.error
    import urllib.request

__all__ = ["ApiFailure", "DLInfraUnavailable", "KernelApiClient", "RestClient"]


#: how long %gpu park waits for the server's checkpoint (seconds)
PARK_TIMEOUT_S = 330.0


class DLInfraUnavailable(Exception):
    """No dlinfra server can be reached from this kernel."""


class ApiFailure(Exception):
    """The server answered with an error; ``str()`` is its message for people."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class RestClient:
    """JSON over HTTP to ``<base_url>dlinfra/api/...``, on the standard library.

    A failed call raises what :meth:`_http_error` (the server answered with an error) or
    :meth:`_unreachable` (no answer) return; subclasses word those for their readers.
    """

    def __init__(self, base_url: str, authorization: str | None, *, timeout: float) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout = timeout
        self._authorization = authorization
        # imported here, not at module level: every kernel imports this module at start-up,
        # and urllib.request (with http.client and email) is most of its import time
        import urllib.request

        # the server is known by its URL: a proxy from the environment must not get in the way
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        raw: bool = False,
    ) -> Any:
        """The decoded JSON answer to ``method path``, None when the answer has no body (with
        ``raw``: the body as text, whatever its type)."""
        import urllib.error
        import urllib.request

        url = urllib.parse.urljoin(self.base_url, "dlinfra/api/" + path)
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if self._authorization:
            req.add_header("Authorization", self._authorization)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(req, timeout=timeout or self.timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as err:
            raise self._http_error(err) from None
        except (urllib.error.URLError, OSError) as err:
            raise self._unreachable(err) from None
        if raw:
            return body.decode()
        return json.loads(body) if body else None

    def _http_error(self, err: urllib.error.HTTPError) -> Exception:
        try:
            body = json.loads(err.read() or b"{}")
            return ApiFailure(
                err.code, str(body.get("message") or err.reason), str(body.get("reason"))
            )
        except ValueError:
            return ApiFailure(err.code, f"HTTP {err.code} {err.reason}", "http")

    def _unreachable(self, err: OSError) -> Exception:
        why = getattr(err, "reason", err)
        return DLInfraUnavailable(f"cannot reach the dlinfra server at {self.base_url}: {why}")


class KernelApiClient(RestClient):
    def __init__(self, base_url: str, kernel_id: str, token: str, *, timeout: float = 10.0) -> None:
        super().__init__(base_url, f"DLInfra-Kernel {token}", timeout=timeout)
        self.kernel_id = kernel_id

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> KernelApiClient:
        missing = [
            name
            for name in ("DLINFRA_API_URL", "DLINFRA_KERNEL_ID", "DLINFRA_TOKEN")
            if not environ.get(name)
        ]
        if missing:
            raise DLInfraUnavailable(
                "this kernel was not started by a Jupyter server with jupyter-dlinfra "
                f"({', '.join(missing)} not set), so there is no GPU ledger to ask"
            )
        return cls(
            environ["DLINFRA_API_URL"], environ["DLINFRA_KERNEL_ID"], environ["DLINFRA_TOKEN"]
        )

    def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        query: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        found: dict[str, Any] = self.request(method, path, body, query=query, timeout=timeout)
        return found or {}

    # -- the calls %gpu makes ------------------------------------------------------------------

    def request_gpus(
        self, count: int, model: str | None, priority_class: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"kernel_id": self.kernel_id, "count": count, "model": model}
        if priority_class is not None:
            body["priority_class"] = priority_class
        return self.call("POST", "allocations", body)

    def fairshare(self) -> dict[str, Any]:
        return self.call("GET", "fairshare")

    def allocation(self, allocation_id: int, *, wait: float = 0.0) -> dict[str, Any]:
        return self.call(
            "GET",
            f"allocations/{allocation_id}",
            query={"wait": f"{wait:.3f}"},
            timeout=self.timeout + wait,
        )

    def my_allocations(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.call("GET", "allocations")["allocations"]
        return found

    def release(self, allocation_id: int) -> None:
        self.call("DELETE", f"allocations/{allocation_id}")

    def restart_kernel(self) -> dict[str, Any]:
        return self.call("POST", f"kernels/{self.kernel_id}/restart", {})

    def cluster(self) -> dict[str, Any]:
        return self.call("GET", "cluster")

    def keep(self) -> dict[str, Any]:
        return self.call("POST", f"kernels/{self.kernel_id}/keep", {})

    def park(self, prepared: Mapping[str, Any]) -> dict[str, Any]:
        # a checkpoint copies the GPUs' memory to the host: as long as the server allows one
        body = {"prepared": dict(prepared)}
        return self.call("POST", f"kernels/{self.kernel_id}/park", body, timeout=PARK_TIMEOUT_S)

    def resume(self) -> dict[str, Any]:
        return self.call("POST", f"kernels/{self.kernel_id}/resume", {})

    def usage(self) -> dict[str, Any]:
        return self.call("GET", f"kernels/{self.kernel_id}/usage")
