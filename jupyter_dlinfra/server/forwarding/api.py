"""A person's own Jupyter server, pointed at the team gateway, forwards ``/dlinfra`` there.

With ``--gateway-url`` set, kernels run on the gateway and so does the ledger: this server keeps
no ledger of its own. JupyterLab still calls this server's ``/dlinfra/api``; each call is
checked here (the person is logged in to their own server, and authorised for ``dlinfra``) and
then made again to the gateway with the person's gateway token, the one GatewayClient uses for
kernels. Answers come back unchanged, the event stream chunk by chunk.

A notebook submitted as a job lives on this server's disk, not the gateway's: a submission that
names a path is sent with the notebook itself (``notebook``), read through the contents manager.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from jupyter_core.utils import ensure_async
from jupyter_server.base.handlers import APIHandler
from jupyter_server.gateway.gateway_client import GatewayClient
from tornado import httpclient, iostream, web

from jupyter_dlinfra.server.parsing import BadJson, parse_json, shown

__all__ = ["FORWARD_ROUTES", "ForwardHandler"]

#: the event stream stays open; other calls get the gateway's answer within this (seconds)
_CALL_TIMEOUT = 120.0
_STREAM_TIMEOUT = 24 * 3600.0
_PASSED_HEADERS = (
    "Content-Type",
    "Content-Disposition",
    "Content-Security-Policy",
    "Cache-Control",
    "X-Content-Type-Options",
)


class _ClientGone(Exception):
    pass


class ForwardHandler(APIHandler):  # type: ignore[misc]
    auth_resource = "dlinfra"

    def initialize(self) -> None:
        self._closed = False

    def on_connection_close(self) -> None:
        self._closed = True

    async def _forward(self, path: str) -> None:
        action = "read" if self.request.method in ("GET", "HEAD") else "write"
        allowed = await ensure_async(
            self.authorizer.is_authorized(self, self.current_user, action, self.auth_resource)
        )
        if not allowed:
            self._json_error(403, f"you are not allowed to {action} dlinfra", "forbidden")
            return
        gateway: Any = GatewayClient.instance()
        url = str(gateway.url).rstrip("/") + "/dlinfra/" + path
        if self.request.query:
            url += "?" + self.request.query
        body: bytes | None = None
        if self.request.method in ("POST", "PUT", "PATCH", "DELETE"):
            body = self.request.body or (b"{}" if self.request.method != "DELETE" else None)
            if self.request.method == "POST" and path == "api/jobs":
                body = await self._with_notebook(body or b"{}")
                if body is None:
                    return
        streaming = path == "api/events"
        accept = self.request.headers.get("Accept", "application/json")
        kwargs = gateway.load_connection_args(
            headers={"Content-Type": "application/json", "Accept": accept}
        )
        kwargs["request_timeout"] = _STREAM_TIMEOUT if streaming else _CALL_TIMEOUT
        kwargs["connect_timeout"] = min(float(kwargs.get("connect_timeout") or 20.0), 20.0)
        request = httpclient.HTTPRequest(
            url,
            method=self.request.method or "GET",
            body=body,
            allow_nonstandard_methods=True,
            header_callback=self._on_header if streaming else None,
            streaming_callback=self._on_chunk if streaming else None,
            **kwargs,
        )
        try:
            response = await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        except _ClientGone:
            return
        except (OSError, httpclient.HTTPClientError) as err:
            if not self._headers_written:
                self._json_error(
                    502,
                    f"cannot reach the team gateway at {gateway.url}: {err}",
                    "gateway_unreachable",
                )
            return
        if streaming:
            if not self._closed and not self._finished:
                self.finish()
            return
        if response.code == 599:
            self._json_error(
                502,
                f"cannot reach the team gateway at {gateway.url}: {response.error}",
                "gateway_unreachable",
            )
            return
        self.set_status(response.code)
        for name in _PASSED_HEADERS:
            if name in response.headers:
                self.set_header(name, response.headers[name])
        if "Location" in response.headers:
            self.set_header("Location", self._local(response.headers["Location"]))
        # a 204 or 304 must go without a body: tornado refuses even an empty one
        self.finish(response.body if response.body and response.code not in (204, 304) else None)

    def _local(self, location: str) -> str:
        """The gateway's Location, as a path on this server."""
        path = urlsplit(location).path
        marker = path.find("/dlinfra/")
        return self.base_url.rstrip("/") + path[marker:] if marker >= 0 else location

    async def _with_notebook(self, body: bytes) -> bytes | None:
        try:
            # its size is the gateway's to judge (it knows its max_notebook_bytes)
            submission = parse_json(body, max_bytes=len(body))
        except BadJson as err:
            self._json_error(400, str(err), "bad_json")
            return None
        if not isinstance(submission, dict) or "notebook" in submission:
            return body
        path = submission.get("path")
        if not isinstance(path, str) or not path or "\x00" in path or len(path) > 4096:
            return body  # the gateway says what is wrong
        try:
            contents: Any = self.contents_manager
            model = await ensure_async(contents.get(path, content=True, type="notebook"))
        except web.HTTPError as err:
            if err.status_code == 404:
                self._json_error(404, f"no notebook {shown(path)} on this server", "no_notebook")
            else:
                self._json_error(400, f"cannot read notebook {shown(path)}: {err}", "bad_notebook")
            return None
        submission["notebook"] = model["content"]
        return json.dumps(submission).encode()

    def _on_header(self, line: str) -> None:
        if line.startswith("HTTP/"):
            parts = line.split(" ", 2)
            if len(parts) >= 2 and parts[1].isdigit():
                self.set_status(int(parts[1]))
            return
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            self.set_header("Content-Type", value.strip())
            self.set_header("Cache-Control", "no-cache")

    def _on_chunk(self, chunk: bytes) -> None:
        if self._closed:
            raise _ClientGone()
        self.write(chunk)
        try:
            self.flush()
        except iostream.StreamClosedError:
            self._closed = True

    def _json_error(self, status: int, message: str, reason: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message, "reason": reason}))

    @web.authenticated  # type: ignore[untyped-decorator]
    async def get(self, path: str) -> None:
        await self._forward(path)

    @web.authenticated  # type: ignore[untyped-decorator]
    async def post(self, path: str) -> None:
        await self._forward(path)

    @web.authenticated  # type: ignore[untyped-decorator]
    async def put(self, path: str) -> None:
        await self._forward(path)

    @web.authenticated  # type: ignore[untyped-decorator]
    async def delete(self, path: str) -> None:
        await self._forward(path)


FORWARD_ROUTES: list[tuple[str, type[web.RequestHandler]]] = [
    (r"/dlinfra/(?P<path>api/.*|metrics)", ForwardHandler),
]
