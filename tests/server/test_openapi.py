"""``api/openapi.yaml`` against the code: the routes, the document itself, and real answers.

The live tests run the extension in a pytest-jupyter server with 4 simulated GPUs and a real
``python3`` kernel, and validate every JSON body against the schema the document gives for that
operation and status code. For idle reclaim, the server's owner is an admin or not (the
``dlinfra_config`` fixture), and the tests drive telemetry passes themselves
(``service.sample()``, the periodic loops do not run) with a policy of fractions of a second.
Batch jobs really run on the local backend, the tests driving the job loop
(``service.jobs_pass()``); their files (non-JSON answers) are checked by status and headers only.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from server_kit import register
from tornado.httpclient import HTTPClientError, HTTPResponse

from jupyter_dlinfra.core.books.jobs import NewJob
from jupyter_dlinfra.core.idle import POLICY_FIELDS
from jupyter_dlinfra.core.scheduling.fairshare import Standing
from jupyter_dlinfra.core.scheduling.policy import FIELDS as SCHEDULING_FIELDS
from jupyter_dlinfra.core.scheduling.policy import PriorityClass, SchedulingPolicy
from jupyter_dlinfra.server.handlers import jobs as job_handlers
from jupyter_dlinfra.server.handlers.gpus import MAX_QUEUE_LIMIT, MAX_WAIT_S, QUEUE_LIMIT
from jupyter_dlinfra.server.handlers.policy import MAX_SIMULATE_HOURS
from jupyter_dlinfra.server.handlers.routes import ROUTES
from jupyter_dlinfra.server.notices import notice_from_event
from jupyter_dlinfra.testing.server import write_notebook

DOC_PATH = Path(__file__).resolve().parents[2] / "api" / "openapi.yaml"
DOC_URI = "urn:dlinfra:openapi"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


# -- the document --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    with DOC_PATH.open(encoding="utf-8") as f:
        loaded = yaml.safe_load(f)
    assert isinstance(loaded, dict)
    return loaded


def _template(pattern: str) -> str:
    """``/x/(?P<name>[^/]+)/y`` -> ``/x/{name}/y``; anything else regex-like is a test failure."""
    path = re.sub(r"\(\?P<(\w+)>\[\^/\]\+\)", r"{\1}", pattern)
    assert not re.search(r"[()\[\]*+?\\^$|]", path), f"route {pattern!r} is not a plain path"
    return path


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                yield path, method, op


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local $refs are expected, not {ref!r}"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"$ref {ref!r} does not resolve"
        node = node[part]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _deref(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = _resolve(doc, node["$ref"])
    return node


def test_every_route_is_documented_and_every_documented_operation_has_a_route(
    doc: dict[str, Any],
) -> None:
    routed = {
        (_template(pattern), method.lower())
        for pattern, _handler, methods in ROUTES
        for method in methods
    }
    documented = {(path, method) for path, method, _op in _operations(doc)}
    assert routed - documented == set(), "handlers without documentation"
    assert documented - routed == set(), "documentation without a handler"


def test_routed_methods_are_implemented_by_their_handlers() -> None:
    for pattern, handler, methods in ROUTES:
        for method in methods:
            assert method.lower() in vars(handler), f"{handler.__name__} lacks {method} {pattern}"


def test_document_is_structurally_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert re.fullmatch(r"3\.1\.\d+", str(doc["openapi"]))
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["servers"] and all("url" in s for s in doc["servers"])
    schemes = doc["components"]["securitySchemes"]
    for requirement in doc["security"]:
        assert set(requirement) <= set(schemes)

    for ref in _refs(doc):
        _resolve(doc, ref)

    ids: list[str] = []
    for path, method, op in _operations(doc):
        where = f"{method.upper()} {path}"
        assert path.startswith(("/dlinfra/api/", "/dlinfra/metrics")), where
        assert isinstance(op.get("operationId"), str), f"{where} has no operationId"
        ids.append(op["operationId"])
        assert op.get("summary") and op.get("description"), f"{where} is not described"
        responses = op.get("responses")
        assert responses, f"{where} has no responses"
        for code, response in responses.items():
            assert isinstance(code, str), f"{where}: status {code!r} must be a quoted string"
            assert re.fullmatch(r"[1-5](\d\d|XX)|default", code), f"{where}: status {code!r}"
            assert "description" in _deref(doc, response), f"{where} {code} has no description"
        # path template parameters are declared, required, and nothing else is in the path
        params = [_deref(doc, p) for p in doc["paths"][path].get("parameters", [])]
        params += [_deref(doc, p) for p in op.get("parameters", [])]
        in_path = {p["name"] for p in params if p["in"] == "path"}
        assert in_path == set(re.findall(r"{(\w+)}", path)), where
        assert all(p["required"] is True for p in params if p["in"] == "path"), where
        names = [(p["name"], p["in"]) for p in params]
        assert len(names) == len(set(names)), f"{where} declares a parameter twice"
    assert len(ids) == len(set(ids)), "operationIds must be unique"

    for name, schema in doc["components"]["schemas"].items():
        try:
            Draft202012Validator.check_schema(schema)
        except Exception as err:  # pragma: no cover - the message is the point
            pytest.fail(f"components.schemas.{name} is not a valid JSON Schema: {err}")


def test_documented_queries_and_bodies_match_the_handlers(doc: dict[str, Any]) -> None:
    post = doc["paths"]["/dlinfra/api/allocations"]["post"]
    body = _deref(doc, post["requestBody"]["content"]["application/json"]["schema"])
    assert set(body["properties"]) == {"kernel_id", "count", "model", "priority_class"}
    assert body["additionalProperties"] is False
    assert body["properties"]["count"]["minimum"] == 1
    wait = next(
        p
        for p in doc["paths"]["/dlinfra/api/allocations/{allocation_id}"]["get"]["parameters"]
        if p["name"] == "wait"
    )
    assert (wait["schema"]["minimum"], wait["schema"]["maximum"]) == (0, MAX_WAIT_S)
    queue = {
        p["name"]: p["schema"] for p in doc["paths"]["/dlinfra/api/queue"]["get"]["parameters"]
    }
    assert set(queue) == {"limit", "offset", "node"}
    assert (queue["limit"]["default"], queue["limit"]["maximum"]) == (QUEUE_LIMIT, MAX_QUEUE_LIMIT)
    allocs = doc["paths"]["/dlinfra/api/allocations"]["get"]
    state = next(p for p in allocs["parameters"] if p["name"] == "state")
    assert state["schema"]["enum"] == ["active", "granted", "all"]

    schemas = doc["components"]["schemas"]
    assert tuple(schemas["PolicyFields"]["properties"]) == POLICY_FIELDS
    assert set(schemas["PolicyOverride"]["properties"]) == {"exempt"}
    assert schemas["Queue"]["properties"]["limit"]["maximum"] == MAX_QUEUE_LIMIT
    assert tuple(schemas["SchedulingFields"]["properties"]) == SCHEDULING_FIELDS
    assert tuple(schemas["SchedulingPolicy"]["required"]) == SCHEDULING_FIELDS
    assert set(SchedulingPolicy().to_json()) == set(SCHEDULING_FIELDS)
    klass = PriorityClass(name="x", priority=1).to_json()
    assert set(schemas["PriorityClass"]["properties"]) == set(klass)
    standing = Standing(
        user="u", account="", usage_gpu_hours=0, held=0, share=1, account_share=1, factor=1
    ).to_json()
    assert set(schemas["Standing"]["properties"]) == set(standing)
    assert set(schemas["Standing"]["required"]) == set(standing)
    simulate = schemas["SimulateRequest"]
    assert set(simulate["properties"]) == {"hours", "policy"}
    assert simulate["properties"]["hours"]["maximum"] == MAX_SIMULATE_HOURS

    submission = schemas["JobSubmission"]
    assert set(submission["properties"]) == job_handlers._SUBMIT_FIELDS
    assert submission["required"] == ["path"] and submission["additionalProperties"] is False
    assert submission["properties"]["gpus"]["minimum"] == 0
    priority = submission["properties"]["priority"]
    assert (priority["minimum"], priority["maximum"]) == (-1000, 1000)
    job = schemas["Job"]
    assert set(job["required"]) == set(job["properties"])
    assert set(job["properties"]["outputs"]["properties"]) == set(job_handlers._OUTPUTS)
    output = doc["paths"]["/dlinfra/api/jobs/{job_id}/output"]["get"]
    fmt = next(p for p in output["parameters"] if p["name"] == "format")
    assert fmt["schema"]["enum"] == list(job_handlers._OUTPUTS)
    documented = set(output["responses"]["200"]["content"])
    assert documented == {t.split(";")[0] for _, t in job_handlers._OUTPUTS.values()}
    listing = doc["paths"]["/dlinfra/api/jobs"]["get"]
    state = next(p for p in listing["parameters"] if p["name"] == "state")
    assert state["schema"]["enum"] == ["active", "ended", "all"]


# -- real answers --------------------------------------------------------------------------------


@pytest.fixture
def dlinfra_config() -> dict[str, Any]:
    """The extension's configuration (``jp_server_config`` in conftest.py adds the ledger)."""
    return {"simulated_gpus": 4}


#: the server's owner is an admin, and in a group with its own override
ADMIN_CONFIG = {
    "simulated_gpus": 4,
    "user_name": "alice",
    "admin_users": ["alice"],
    "user_groups": {"alice": ["ml"]},
    "unix_groups": False,
}


class Api:
    """Calls one server and checks each answer against the document's operation."""

    def __init__(self, doc: dict[str, Any], fetch: Any) -> None:
        self.doc = doc
        self.fetch = fetch
        resource = Resource.from_contents(doc, default_specification=DRAFT202012)
        self.registry: Registry = Registry().with_resource(DOC_URI, resource)

    def validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        return Draft202012Validator(
            _absolute_refs(schema), registry=self.registry, format_checker=FormatChecker()
        )

    def schema_of(self, op: dict[str, Any], status: int) -> dict[str, Any] | None:
        responses = op["responses"]
        assert str(status) in responses, f"status {status} is not documented"
        content = _deref(self.doc, responses[str(status)]).get("content")
        return None if content is None else content["application/json"]["schema"]

    async def __call__(
        self,
        method: str,
        template: str,
        *,
        path: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        expect: int,
        schema_name: str | None = None,
    ) -> tuple[HTTPResponse, Any]:
        op = self.doc["paths"][template][method.lower()]
        url = template.format(**(path or {}))
        kwargs: dict[str, Any] = {"method": method, "params": params, "headers": headers}
        if body is not None:
            kwargs["body"] = json.dumps(body)
        elif method in ("POST", "PUT", "PATCH"):
            kwargs["body"] = b""
        try:
            response = await self.fetch(*url.strip("/").split("/"), **kwargs)
        except HTTPClientError as err:
            assert err.response is not None
            response = err.response
        text = response.body.decode() if response.body else ""
        assert response.code == expect, f"{method} {url}: {response.code} {text}"
        if body is not None and response.code < 300:
            request_schema = op["requestBody"]["content"]["application/json"]["schema"]
            self.validator(request_schema).validate(body)
        schema = self.schema_of(op, response.code)
        if schema is None:
            assert text == "", f"{method} {url}: {response.code} should have no body"
            return response, None
        if schema_name is not None:
            assert schema == {"$ref": f"#/components/schemas/{schema_name}"}
        assert response.headers["Content-Type"].startswith("application/json")
        answer = json.loads(text)
        errors = sorted(self.validator(schema).iter_errors(answer), key=str)
        assert not errors, f"{method} {url}: " + "; ".join(
            f"{list(e.absolute_path)}: {e.message}" for e in errors
        )
        if response.code < 300:
            assert isinstance(answer["simulated"], bool)
        return response, answer


def _absolute_refs(node: Any) -> Any:
    """A schema of the document whose local ``$ref``s point into the registered document."""
    if isinstance(node, dict):
        return {
            k: f"{DOC_URI}{v}" if k == "$ref" and isinstance(v, str) else _absolute_refs(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_absolute_refs(v) for v in node]
    return node


def _extension(serverapp: Any) -> Any:
    return serverapp.extension_manager.extension_points["jupyter_dlinfra"].app


async def _inventory(api: Api) -> dict[str, Any]:
    """The GPUs must be in the ledger before the first request is answered.

    pytest-jupyter never starts the IOLoop, so extensions are not *started* (no periodic loops);
    the inventory sync happens earlier, in ``initialize_settings`` (``GpuService.prepare``).
    """
    _, cluster = await api("GET", "/dlinfra/api/cluster", expect=200, schema_name="Cluster")
    assert cluster["gpu_count"] == 4, "the inventory was not synced at initialisation"
    return cluster


async def test_answers_without_a_kernel_match_the_document(
    doc: dict[str, Any], jp_fetch: Any
) -> None:
    api = Api(doc, jp_fetch)
    cluster = await _inventory(api)
    assert cluster["free_count"] == 4 and cluster["queue_length"] == 0
    assert cluster["simulated"] is True and cluster["provider"]["simulated"] is True
    assert all(g["simulated"] for n in cluster["nodes"] for g in n["gpus"])

    alloc = "/dlinfra/api/allocations/{allocation_id}"
    for status, reason, kwargs in [
        (400, "bad_id", {"path": {"allocation_id": "abc"}}),
        (400, "bad_query", {"path": {"allocation_id": "1"}, "params": {"wait": "61"}}),
        (400, "bad_query", {"path": {"allocation_id": "1"}, "params": {"wait": "soon"}}),
        (404, "no_allocation", {"path": {"allocation_id": "999"}}),
    ]:
        _, err = await api("GET", alloc, expect=status, schema_name="Error", **kwargs)
        assert err["reason"] == reason
    _, err = await api("DELETE", alloc, path={"allocation_id": "999"}, expect=404)
    assert err["reason"] == "no_allocation"

    allocs = "/dlinfra/api/allocations"
    _, err = await api("GET", allocs, params={"state": "ended"}, expect=400)
    assert err["reason"] == "bad_query"
    _, listed = await api(
        "GET", allocs, params={"state": "all"}, expect=200, schema_name="AllocationList"
    )
    assert listed["allocations"] == []
    for status, reason, body in [
        (400, "bad_field", {"kernel_id": "k", "count": 1, "colour": "red"}),
        (400, "bad_field", {"kernel_id": "k", "count": "2"}),
        (400, "bad_field", {"count": 1}),
        (400, "bad_json", [1, 2]),
        (404, "no_kernel", {"kernel_id": "no-such-kernel", "count": 1}),
    ]:
        _, err = await api("POST", allocs, body=body, expect=status)
        assert err["reason"] == reason, body

    restart = "/dlinfra/api/kernels/{kernel_id}/restart"
    _, err = await api("POST", restart, path={"kernel_id": "no-such-kernel"}, body={}, expect=404)
    assert err["reason"] == "no_kernel"

    _, err = await api(
        "GET",
        "/dlinfra/api/queue",
        headers={"Authorization": "DLInfra-Kernel not-a-token"},
        expect=403,
    )
    assert err["reason"] == "bad_kernel_token"
    _, err = await api("GET", "/dlinfra/api/queue", headers={"Authorization": ""}, expect=403)
    assert err["reason"] == "forbidden"


async def test_a_kernel_through_its_life_matches_the_document(
    doc: dict[str, Any], jp_fetch: Any, jp_serverapp: Any, jp_base_url: str
) -> None:
    api = Api(doc, jp_fetch)
    await _inventory(api)
    service = _extension(jp_serverapp).service
    started = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kernel_id = json.loads(started.body)["id"]
    try:
        allocs = "/dlinfra/api/allocations"
        one = "/dlinfra/api/allocations/{allocation_id}"
        response, granted = await api(
            "POST",
            allocs,
            body={"kernel_id": kernel_id, "count": 2},
            expect=201,
            schema_name="Allocation",
        )
        aid = granted["id"]
        assert response.headers["Location"] == f"{jp_base_url}dlinfra/api/allocations/{aid}"
        assert granted["state"] == "granted" and len(granted["gpus"]) == 2
        assert granted["simulated"] is True
        assert granted["cuda_visible_devices"] == ",".join(g["uuid"] for g in granted["gpus"])

        _, cluster = await api("GET", "/dlinfra/api/cluster", expect=200, schema_name="Cluster")
        assert cluster["free_count"] == 2
        holders = [g["holder"] for n in cluster["nodes"] for g in n["gpus"] if g["holder"]]
        assert [h["kernel_id"] for h in holders] == [kernel_id, kernel_id]

        _, listed = await api(
            "GET",
            allocs,
            params={"kernel_id": kernel_id},
            expect=200,
            schema_name="AllocationList",
        )
        assert [a["id"] for a in listed["allocations"]] == [aid]
        _, again = await api(
            "GET",
            one,
            path={"allocation_id": aid},
            params={"wait": "0.5"},
            expect=200,
            schema_name="Allocation",
        )
        assert again["state"] == "granted"
        assert {"utilization_percent", "memory_used_bytes", "sampled_at"} <= set(again["gpus"][0])

        # a second kernel, known to the ledger only, with its own token: it waits in the queue
        plan = await service.kernel_launching(
            kernel_id="queued-kernel", kernel_name="python3", path=None, gpus=0, model=None
        )
        as_kernel = {"Authorization": f"DLInfra-Kernel {plan.env['DLINFRA_TOKEN']}"}
        _, queued = await api(
            "POST",
            allocs,
            body={"count": 3},
            headers=as_kernel,
            expect=201,
            schema_name="Allocation",
        )
        assert queued["state"] == "queued" and queued["position"] == 1
        assert queued["gpus"] == [] and queued["waiting_reason"]
        assert queued["simulated"] is True, "a queued request on simulated GPUs is labelled"
        _, waited = await api(
            "GET",
            one,
            path={"allocation_id": queued["id"]},
            params={"wait": "0.2"},
            headers=as_kernel,
            expect=200,
        )
        assert waited["state"] == "queued"
        _, queue = await api("GET", "/dlinfra/api/queue", expect=200, schema_name="Queue")
        assert [a["id"] for a in queue["queue"]] == [queued["id"]]
        _, mine = await api("GET", allocs, headers=as_kernel, expect=200)
        assert [a["id"] for a in mine["allocations"]] == [queued["id"]]
        _, err = await api("GET", one, path={"allocation_id": aid}, headers=as_kernel, expect=403)
        assert err["reason"] == "forbidden"
        _, err = await api(
            "POST",
            allocs,
            body={"kernel_id": kernel_id, "count": 1},
            headers=as_kernel,
            expect=403,
        )
        assert err["reason"] == "forbidden"
        await api(
            "DELETE", one, path={"allocation_id": queued["id"]}, headers=as_kernel, expect=204
        )
        _, cancelled = await api("GET", one, path={"allocation_id": queued["id"]}, expect=200)
        assert cancelled["state"] == "cancelled" and cancelled["position"] is None

        for count, status, reason in [
            (99, 409, "already_allocated"),  # holding GPUs is the first problem
            (0, 400, "invalid"),
            (1, 409, "already_allocated"),
        ]:
            _, err = await api(
                "POST",
                allocs,
                body={"kernel_id": kernel_id, "count": count},
                expect=status,
                schema_name="Error",
            )
            assert err["reason"] == reason, (count, err)

        before = await service.call(service.ledger.kernel, kernel_id)
        _, restarted = await api(
            "POST",
            "/dlinfra/api/kernels/{kernel_id}/restart",
            path={"kernel_id": kernel_id},
            body={},
            expect=202,
            schema_name="RestartAnswer",
        )
        assert [a["id"] for a in restarted["keeps"]] == [aid]
        await _restarted(service, kernel_id, before.pid)
        _, kept = await api("GET", one, path={"allocation_id": aid}, expect=200)
        assert kept["state"] == "granted"

        await api("DELETE", one, path={"allocation_id": aid}, expect=204)
        await api("DELETE", one, path={"allocation_id": aid}, expect=204)
        _, released = await api(
            "GET", one, path={"allocation_id": aid}, expect=200, schema_name="Allocation"
        )
        assert released["state"] == "released" and released["ended_at"] is not None
        _, everything = await api("GET", allocs, params={"state": "all"}, expect=200)
        assert {a["id"] for a in everything["allocations"]} == {aid, queued["id"]}
    finally:
        await jp_fetch("api", "kernels", kernel_id, method="DELETE")


async def _restarted(
    service: Any, kernel_id: str, old_pid: int | None, timeout: float = 60
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        record = await service.call(service.ledger.kernel, kernel_id)
        if record.pid is not None and record.pid != old_pid:
            return
        assert loop.time() < deadline, f"kernel {kernel_id} did not restart in {timeout} s"
        await asyncio.sleep(0.1)


# -- idle reclaim: the policy, dry runs, keeping, usage ------------------------------------------

KEEP = "/dlinfra/api/kernels/{kernel_id}/keep"
USAGE = "/dlinfra/api/kernels/{kernel_id}/usage"
POLICY = "/dlinfra/api/policy"
SIMULATE = "/dlinfra/api/policy/simulate"
ME = "/dlinfra/api/me"
NOTICE_ACTION = "/dlinfra/api/notices/{notice_id}/actions/{action_id}"


async def _until(predicate: Any, what: str, *, step: Any = None, timeout: float = 30.0) -> Any:
    """Poll ``predicate`` (after ``await step()`` each round, if given) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if step is not None:
            await step()
        value = predicate()
        if value:
            return value
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_reclaim_answers_for_a_non_admin_match_the_document(
    doc: dict[str, Any], jp_fetch: Any, jp_serverapp: Any
) -> None:
    api = Api(doc, jp_fetch)
    app = _extension(jp_serverapp)
    owner = app.service.settings.user
    assert not app.directory.is_admin(owner)

    _, me = await api("GET", ME, expect=200, schema_name="Me")
    assert me["user"] == owner and me["kernel_id"] is None and me["admin"] is False
    _, view = await api("GET", POLICY, expect=200, schema_name="PolicyView")
    assert view["source"] == "config" and view["editable"] is False
    assert view["updated_at"] is None and view["changes"] == []
    assert view["policy"] == view["configured"]
    _, err = await api("PUT", POLICY, body={"reclaim_after": 7200}, expect=403)
    assert err["reason"] == "not_admin"
    _, err = await api("POST", SIMULATE, body={"hours": 1}, expect=403)
    assert err["reason"] == "not_admin"

    for method, template in [("POST", KEEP), ("GET", USAGE)]:
        _, err = await api(method, template, path={"kernel_id": "no-such-kernel"}, expect=404)
        assert err["reason"] == "no_kernel", template
    for notice_id, action_id, status, reason in [
        ("abc", "keep", 400, "bad_id"),
        ("999", "keep", 404, "no_notice"),
    ]:
        _, err = await api(
            "POST",
            NOTICE_ACTION,
            path={"notice_id": notice_id, "action_id": action_id},
            expect=status,
            schema_name="Error",
        )
        assert err["reason"] == reason

    # a kernel known to the ledger only, acting with its token; and another user's kernel
    register(app, "token-kernel", token="the-token")
    register(app, "bobs-kernel", user="bob")
    as_kernel = {"Authorization": "DLInfra-Kernel the-token"}
    _, me = await api("GET", ME, headers=as_kernel, expect=200)
    assert me["kernel_id"] == "token-kernel" and me["admin"] is False
    _, view = await api("GET", POLICY, headers=as_kernel, expect=200)
    assert view["editable"] is False
    _, err = await api("PUT", POLICY, body={"max_keeps": 9}, headers=as_kernel, expect=403)
    assert err["reason"] == "not_admin"
    _, usage = await api(
        "GET",
        USAGE,
        path={"kernel_id": "token-kernel"},
        headers=as_kernel,
        expect=200,
        schema_name="KernelUsage",
    )
    assert usage["held"] == [] and usage["idle"] is None and usage["at"] is None
    _, err = await api(
        "POST", KEEP, path={"kernel_id": "token-kernel"}, body={}, headers=as_kernel, expect=404
    )
    assert err["reason"] == "no_idle_state"
    _, err = await api(
        "POST", KEEP, path={"kernel_id": "token-kernel"}, body={"why": 1}, expect=400
    )
    assert err["reason"] == "bad_field"
    for method, template, kernel_id, headers in [
        ("GET", USAGE, "bobs-kernel", as_kernel),
        ("POST", KEEP, "bobs-kernel", as_kernel),
        ("GET", USAGE, "bobs-kernel", None),
        ("POST", KEEP, "bobs-kernel", None),
    ]:
        _, err = await api(
            method, template, path={"kernel_id": kernel_id}, headers=headers, expect=403
        )
        assert err["reason"] == "forbidden", (method, template, headers)


@pytest.mark.parametrize("dlinfra_config", [ADMIN_CONFIG])
async def test_policy_and_dry_run_answers_for_an_admin_match_the_document(
    doc: dict[str, Any], jp_fetch: Any, jp_serverapp: Any, dlinfra_config: dict[str, Any]
) -> None:
    api = Api(doc, jp_fetch)
    app = _extension(jp_serverapp)
    _, me = await api("GET", ME, expect=200, schema_name="Me")
    assert me == {
        "user": "alice",
        "kernel_id": None,
        "groups": ["ml"],
        "admin": True,
        "simulated": True,
    }
    _, view = await api("GET", POLICY, expect=200)
    assert view["editable"] is True and view["source"] == "config"

    for body, field in [
        ({"bogus": 1}, "bogus"),
        ({"idle_after": 600, "warn_after": 60}, "warn_after"),
        ({"action": "explode"}, "action"),
        ({"groups": {"ml": {"reclaim_after": -1}}}, "groups.ml.reclaim_after"),
        ({"users": {"bob": {"exempt": "yes"}}}, "users.bob.exempt"),
    ]:
        _, err = await api("PUT", POLICY, body=body, expect=400, schema_name="Error")
        assert err["reason"] == "bad_policy" and err["message"].startswith(f"{field}: "), err
    _, err = await api("PUT", POLICY, body=[1], expect=400)
    assert err["reason"] == "bad_json"

    change = {
        "reclaim_after": 7200,
        "warn_after": 3600,
        "users": {"bob": {"exempt": True}},
        "groups": {"ml": {"reclaim_after": 5400, "action": "notify"}},
    }
    _, view = await api("PUT", POLICY, body=change, expect=200, schema_name="PolicyView")
    assert view["source"] == "api" and view["updated_by"] == "alice"
    assert view["updated_at"] is not None
    assert view["policy"]["users"] == {"bob": {"exempt": True}}
    assert view["policy"]["groups"] == {"ml": {"reclaim_after": 5400.0, "action": "notify"}}
    assert view["configured"]["reclaim_after"] != 7200
    fields = {c["field"] for c in view["changes"]}
    assert {"reclaim_after", "users.bob.exempt", "groups.ml.action"} <= fields

    # recorded usage to replay: one kernel idle for 2 h, one busy
    from jupyter_dlinfra.core.books.idle import UsageBucket

    start = app.service.ledger.clock.now() - 3 * 3600
    buckets = []
    for minute in range(120):
        for kid, util in (("lazy", 0.0), ("busy", 90.0)):
            bucket = UsageBucket(
                kernel_id=kid, bucket=start + 60 * minute, user="carol", path="a.ipynb", gpus=2
            )
            bucket.add(util, 0)
            buckets.append(bucket)
    await app.service.call(app.service.idle_book.record_usage, buckets)

    _, report = await api(
        "POST",
        SIMULATE,
        body={"hours": 4, "policy": {"warn_after": 1200, "reclaim_after": 1800}},
        expect=200,
        schema_name="SimulateReport",
    )
    assert report["kernels_seen"] == 2 and report["reclaims"] == 1
    assert [k["kernel_id"] for k in report["kernels"]] == ["lazy"]
    assert report["policy"]["reclaim_after"] == 1800 and report["recovered_gpu_hours"] > 0
    _, report = await api("POST", SIMULATE, expect=200)
    assert report["hours"] == 24 and report["policy"] == view["policy"]
    _, report = await api("POST", SIMULATE, body={"hours": 0.5, "policy": None}, expect=200)
    assert report["kernels_seen"] == 0 and report["kernels"] == []
    for body, reason in [
        ({"hours": 0}, "bad_field"),
        ({"hours": 745}, "bad_field"),
        ({"hours": "x"}, "bad_field"),
        ({"hours": 1, "extra": 1}, "bad_field"),
        ({"policy": {"reclaim_after": -1}}, "bad_policy"),
        ([], "bad_json"),
    ]:
        _, err = await api("POST", SIMULATE, body=body, expect=400)
        assert err["reason"] == reason, body
    _, view = await api("GET", POLICY, expect=200)
    assert view["policy"]["reclaim_after"] == 7200, "a dry run changes nothing"

    _, view = await api("PUT", POLICY, body={"users": {}, "groups": {}}, expect=200)
    assert view["policy"]["users"] == {} and view["policy"]["groups"] == {}


@pytest.mark.parametrize("dlinfra_config", [ADMIN_CONFIG])
async def test_an_idle_kernel_warned_and_kept_matches_the_document(
    doc: dict[str, Any], jp_fetch: Any, jp_serverapp: Any, dlinfra_config: dict[str, Any]
) -> None:
    api = Api(doc, jp_fetch)
    app = _extension(jp_serverapp)
    service = app.service
    for gpu in service.provider.devices():
        service.provider.set_load(gpu.uuid, 0.0)
    # warned after 20 ms idle, never reclaimed during the test; one keep for the group "ml"
    fast = {
        "idle_after": 0.01,
        "warn_after": 0.02,
        "reclaim_after": 1000,
        "keep_extension": 1000,
        "max_keeps": 3,
        "groups": {"ml": {"max_keeps": 1}},
    }
    await api("PUT", POLICY, body=fast, expect=200)

    started = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kernel_id = json.loads(started.body)["id"]
    kid = {"kernel_id": kernel_id}
    try:
        await _until(lambda: service.ledger.kernel(kernel_id).pid is not None, "the kernel's pid")
        _, usage = await api("GET", USAGE, path=kid, expect=200, schema_name="KernelUsage")
        assert usage["held"] == [] and usage["idle"] is None and usage["gpus"] == []
        _, err = await api("POST", KEEP, path=kid, body={}, expect=404, schema_name="Error")
        assert err["reason"] == "no_idle_state"

        _, granted = await api(
            "POST",
            "/dlinfra/api/allocations",
            body={"kernel_id": kernel_id, "count": 1},
            expect=201,
        )
        gpu = granted["gpus"][0]["uuid"]

        def warning() -> Any:
            found = [
                e
                for e in service.ledger.events()
                if e.kind == "idle_warning" and e.kernel_id == kernel_id
            ]
            return found[-1] if found else None

        event = await _until(warning, "the idle warning", step=service.sample)
        _, usage = await api("GET", USAGE, path=kid, expect=200, schema_name="KernelUsage")
        assert usage["held"] == [gpu] and usage["processes"] >= 1
        assert [g["uuid"] for g in usage["gpus"]] == [gpu] and usage["gpus"][0]["held"] is True
        idle = usage["idle"]
        assert idle["state"] == "warned" and idle["keeps_left"] == 1
        assert idle["warned_at"] is not None and idle["reclaim_at"] is not None

        # the event stream shows the same state, and the warning's notice offers Keep
        snapshot = await service.events.refresh()
        body = json.loads(snapshot.frame.decode().split("data: ", 1)[1])
        api.validator({"$ref": "#/components/schemas/Snapshot"}).validate(body)
        assert body["idle"][kernel_id]["state"] == "warned"
        assert kernel_id in body["hints"]
        notice = notice_from_event(
            event,
            previous=None,
            kernels={k.kernel_id: k for k in service.ledger.kernels()},
            owner_of=lambda _aid: None,
        )
        assert notice is not None
        api.validator({"$ref": "#/components/schemas/Notice"}).validate(notice.to_json())
        assert notice.to_json()["actions"] == [{"id": "keep", "label": "Keep"}]

        granted_seq = next(
            e.seq
            for e in service.ledger.events()
            if e.kind == "granted" and e.kernel_id == kernel_id
        )
        for notice_id, action_id, status, reason in [
            (str(event.seq), "snooze", 400, "bad_action"),
            (str(granted_seq), "keep", 404, "no_notice"),
        ]:
            _, err = await api(
                "POST",
                NOTICE_ACTION,
                path={"notice_id": notice_id, "action_id": action_id},
                expect=status,
            )
            assert err["reason"] == reason
        _, kept = await api(
            "POST",
            NOTICE_ACTION,
            path={"notice_id": str(event.seq), "action_id": "keep"},
            expect=200,
            schema_name="KeepAnswer",
        )
        assert kept["kernel_id"] == kernel_id and kept["state"] == "idle"
        assert kept["keeps_left"] == 0 and kept["hold_until"] is not None
        _, err = await api("POST", KEEP, path=kid, body={}, expect=409, schema_name="Error")
        assert err["reason"] == "conflict" and "kept 1 times" in err["message"]

        # in use again: nothing to keep
        service.provider.set_load(gpu, 80.0)
        await _until(
            lambda: service.idle_book.state(kernel_id).phase.value == "active",
            "the kernel to be active",
            step=service.sample,
        )
        _, usage = await api("GET", USAGE, path=kid, expect=200)
        assert usage["idle"]["state"] == "active" and usage["idle"]["idle_since"] is None
        _, err = await api("POST", KEEP, path=kid, body={}, expect=409)
        assert err["reason"] == "conflict" and "in use" in err["message"]

        # exempt: only the state is shown, and there is nothing to keep
        await api("PUT", POLICY, body={"users": {"alice": {"exempt": True}}}, expect=200)
        await service.sample()
        _, usage = await api("GET", USAGE, path=kid, expect=200)
        assert usage["idle"] == {"state": "exempt"}
        _, err = await api("POST", KEEP, path=kid, body={}, expect=409)
        assert err["reason"] == "conflict" and "exempt" in err["message"]
        snapshot = await service.events.refresh()
        body = json.loads(snapshot.frame.decode().split("data: ", 1)[1])
        api.validator({"$ref": "#/components/schemas/Snapshot"}).validate(body)
        assert body["idle"][kernel_id] == {"state": "exempt"}
    finally:
        await jp_fetch("api", "kernels", kernel_id, method="DELETE")


PARK = "/dlinfra/api/kernels/{kernel_id}/park"
RESUME = "/dlinfra/api/kernels/{kernel_id}/resume"


async def test_a_kernel_parked_and_resumed_matches_the_document(
    doc: dict[str, Any], jp_fetch: Any, jp_serverapp: Any
) -> None:
    api = Api(doc, jp_fetch)
    service = _extension(jp_serverapp).service
    started = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kernel_id = json.loads(started.body)["id"]
    kid = {"kernel_id": kernel_id}
    try:
        await _until(lambda: service.ledger.kernel(kernel_id).pid is not None, "the kernel's pid")
        _, err = await api("POST", PARK, path=kid, body={}, expect=409, schema_name="Error")
        assert err["reason"] == "not_parked" and "holds no GPUs" in err["message"]
        _, granted = await api(
            "POST",
            "/dlinfra/api/allocations",
            body={"kernel_id": kernel_id, "count": 1},
            expect=201,
        )
        gpu = granted["gpus"][0]["uuid"]
        service.provider.set_load(gpu, 0.0, memory_used_bytes=1 << 30)
        await service.sample()
        # only the kernel itself, with its token, says what it prepared
        _, err = await api("POST", PARK, path=kid, body={"prepared": {"blockers": []}}, expect=400)
        assert err["reason"] == "bad_field"
        _, err = await api("POST", RESUME, path=kid, body={}, expect=409, schema_name="Error")
        assert err["reason"] == "not_parked"

        _, parked = await api("POST", PARK, path=kid, body={}, expect=200, schema_name="ParkAnswer")
        assert parked["allocation"]["park"]["state"] == "parked"
        assert parked["allocation"]["park"]["bytes"] == 1 << 30
        _, usage = await api("GET", USAGE, path=kid, expect=200, schema_name="KernelUsage")
        assert usage["held"] == [] and usage["parked"]["allocation_id"] == granted["id"]
        _, listed = await api(
            "GET", "/dlinfra/api/allocations", params={"kernel_id": kernel_id}, expect=200
        )
        assert listed["allocations"][0]["park"]["state"] == "parked"
        assert listed["allocations"][0]["on_loan"] is False
        # the cluster view and the event stream show it parked, its GPU free to lend only
        _, cluster = await api("GET", "/dlinfra/api/cluster", expect=200, schema_name="Cluster")
        entry = next(g for n in cluster["nodes"] for g in n["gpus"] if g["uuid"] == gpu)
        assert entry["holder"] is None and entry["parked_for"]["allocation_id"] == granted["id"]
        assert cluster["free_count"] == cluster["gpu_count"] - 1
        snapshot = await service.events.refresh()
        body = json.loads(snapshot.frame.decode().split("data: ", 1)[1])
        api.validator({"$ref": "#/components/schemas/Snapshot"}).validate(body)
        shown = {a["id"]: a for a in body["allocations"]}
        assert shown[granted["id"]]["park"]["state"] == "parked", body["allocations"]
        assert body["cluster"]["free_count"] == cluster["free_count"]

        _, back = await api("POST", RESUME, path=kid, body={}, expect=200, schema_name="ParkAnswer")
        assert back["allocation"]["park"] is None or back["allocation"]["park"]["state"] in (
            "resuming",
            "restoring",
        )

        def resumed() -> bool:
            return service.ledger.allocation(granted["id"]).park_state is None

        await _until(resumed, "the resume")
        _, usage = await api("GET", USAGE, path=kid, expect=200, schema_name="KernelUsage")
        assert usage["held"] == [gpu] and usage["parked"] is None
    finally:
        await jp_fetch("api", "kernels", kernel_id, method="DELETE")


# -- scheduling: the policy, fair share, classes of requests --------------------------------------

SCHEDULING = "/dlinfra/api/scheduling"
FAIRSHARE = "/dlinfra/api/fairshare"


async def test_scheduling_answers_for_a_non_admin_match_the_document(
    doc: dict[str, Any], jp_fetch: Any, jp_serverapp: Any
) -> None:
    api = Api(doc, jp_fetch)
    app = _extension(jp_serverapp)
    owner = app.service.settings.user
    await _inventory(api)

    _, view = await api("GET", SCHEDULING, expect=200, schema_name="SchedulingView")
    assert view["source"] == "config" and view["editable"] is False
    assert view["updated_at"] is None and view["updated_by"] is None and view["changes"] == []
    assert view["policy"] == view["configured"]
    assert list(view["policy"]["classes"]) == ["interactive", "batch", "low"]
    _, err = await api(
        "PUT", SCHEDULING, body={"fair_share": False}, expect=403, schema_name="Error"
    )
    assert err["reason"] == "not_admin"
    register(app, "token-kernel", token="the-token")
    as_kernel = {"Authorization": "DLInfra-Kernel the-token"}
    _, view = await api("GET", SCHEDULING, headers=as_kernel, expect=200)
    assert view["editable"] is False
    _, err = await api("PUT", SCHEDULING, body={}, headers=as_kernel, expect=403)
    assert err["reason"] == "not_admin"

    _, fair = await api("GET", FAIRSHARE, expect=200, schema_name="FairShare")
    assert fair["user"] == owner and fair["you"] is None and fair["users"] is None
    assert fair["fair_share"] is True and fair["quota"] is None

    # a request in the batch class; an unknown class is refused with the classes named
    allocs = "/dlinfra/api/allocations"
    one = "/dlinfra/api/allocations/{allocation_id}"
    register(app, "batch-kernel")
    ask = {"kernel_id": "batch-kernel", "count": 1}
    _, err = await api(
        "POST", allocs, body={**ask, "priority_class": "gold"}, expect=400, schema_name="Error"
    )
    assert err["reason"] == "unknown_class" and "interactive, batch, low" in err["message"]
    _, err = await api("POST", allocs, body={**ask, "priority_class": 7}, expect=400)
    assert err["reason"] == "bad_field"
    _, granted = await api(
        "POST",
        allocs,
        body={**ask, "priority_class": "batch"},
        expect=201,
        schema_name="Allocation",
    )
    assert granted["state"] == "granted" and granted["priority_class"] == "batch"
    assert granted["kind"] == "kernel" and granted["borrowed"] is False
    assert granted["waiting_code"] is None and granted["estimated_start"] is None
    assert granted["preempted_for"] is None and granted["preempt_reason"] is None

    # a request for all four waits, with a reason code and an estimated start
    _, queued = await api(
        "POST", allocs, body={"count": 4}, headers=as_kernel, expect=201, schema_name="Allocation"
    )
    assert queued["state"] == "queued" and queued["priority_class"] == "interactive"
    assert queued["waiting_code"] == "no_free_gpu" and queued["estimated_start"] is not None
    _, queue = await api("GET", "/dlinfra/api/queue", expect=200, schema_name="Queue")
    assert [a["waiting_code"] for a in queue["queue"]] == ["no_free_gpu"]
    _, fair = await api("GET", FAIRSHARE, headers=as_kernel, expect=200, schema_name="FairShare")
    assert fair["you"]["user"] == owner and fair["you"]["held"] == 1
    assert fair["you"]["rank"] == 1 and fair["users"] is None

    # a release records the use: the waiting request is granted, the factor falls below 1
    await api("DELETE", one, path={"allocation_id": granted["id"]}, expect=204)
    _, now_granted = await api(
        "GET", one, path={"allocation_id": queued["id"]}, expect=200, schema_name="Allocation"
    )
    assert now_granted["state"] == "granted" and now_granted["waiting_code"] is None
    _, fair = await api("GET", FAIRSHARE, expect=200, schema_name="FairShare")
    assert fair["you"]["factor"] < 1 and fair["you"]["held"] == 4 and fair["you"]["rank"] is None
    await api("DELETE", one, path={"allocation_id": queued["id"]}, expect=204)


@pytest.mark.parametrize("dlinfra_config", [ADMIN_CONFIG])
async def test_scheduling_changes_by_an_admin_match_the_document(
    doc: dict[str, Any], jp_fetch: Any, jp_serverapp: Any, dlinfra_config: dict[str, Any]
) -> None:
    api = Api(doc, jp_fetch)
    app = _extension(jp_serverapp)
    await _inventory(api)
    _, view = await api("GET", SCHEDULING, expect=200, schema_name="SchedulingView")
    assert view["editable"] is True and view["source"] == "config"

    for body, field in [
        ({"bogus": 1}, "bogus"),
        ({"classes": {"x": {"priority": "high"}}}, "classes.x.priority"),
        ({"classes": {"interactive": {"priority": 1, "weight": 2}}}, "classes.interactive.weight"),
        ({"user_quotas": {"bob": -1}}, "user_quotas.bob"),
        ({"kernel_class": "batch"}, "kernel_class"),
        ({"job_class": "gold"}, "job_class"),
        ({"half_life": 0}, "half_life"),
        ({"fair_share": "yes"}, "fair_share"),
    ]:
        _, err = await api("PUT", SCHEDULING, body=body, expect=400, schema_name="Error")
        assert err["reason"] == "bad_policy" and err["message"].startswith(f"{field}: "), err
    _, err = await api("PUT", SCHEDULING, body=[1], expect=400)
    assert err["reason"] == "bad_json"
    _, view = await api("GET", SCHEDULING, expect=200)
    assert view["source"] == "config", "a refused change stores nothing"

    change = {
        "classes": {
            "urgent": {"priority": 200},
            "interactive": {"priority": 100},
            "batch": {"priority": 50, "preemptible": True},
        },
        "default_user_quota": 4,
        "user_quotas": {"bob": 1},
        "group_shares": {"ml": 2},
    }
    _, view = await api("PUT", SCHEDULING, body=change, expect=200, schema_name="SchedulingView")
    assert view["source"] == "api" and view["updated_by"] == "alice"
    assert view["updated_at"] is not None
    assert list(view["policy"]["classes"]) == ["urgent", "interactive", "batch"]
    assert view["policy"]["user_quotas"] == {"bob": 1}
    assert view["configured"]["default_user_quota"] is None
    fields = {c["field"] for c in view["changes"]}
    assert {
        "classes.urgent.priority",
        "classes.low.priority",
        "default_user_quota",
        "user_quotas.bob",
        "group_shares.ml",
    } <= fields

    # bob's second request passes his quota of 1: it waits, for the reason "quota"
    allocs = "/dlinfra/api/allocations"
    register(app, "bob-1", user="bob")
    register(app, "bob-2", user="bob")
    _, held = await api("POST", allocs, body={"kernel_id": "bob-1", "count": 1}, expect=201)
    assert held["state"] == "granted"
    _, over = await api(
        "POST",
        allocs,
        body={"kernel_id": "bob-2", "count": 1, "priority_class": "urgent"},
        expect=201,
        schema_name="Allocation",
    )
    assert over["state"] == "queued" and over["waiting_code"] == "quota"
    assert over["priority_class"] == "urgent" and "quota of 1" in over["waiting_reason"]
    _, fair = await api("GET", FAIRSHARE, expect=200, schema_name="FairShare")
    assert fair["user"] == "alice" and fair["you"] is None and fair["quota"] == 4
    assert [(s["user"], s["held"], s["rank"]) for s in fair["users"]] == [("bob", 1, 1)]


# -- batch jobs ----------------------------------------------------------------------------------
#
# The job loop does not run under pytest-jupyter, but a submission (and a re-run) kicks off one
# pass in the background: a job that may start starts at once. To see jobs queued, the tests
# make them wait for GPUs (a kernel of the ledger holds all four) or for another job.

JOBS = "/dlinfra/api/jobs"
JOB = "/dlinfra/api/jobs/{job_id}"
JOB_LOG = "/dlinfra/api/jobs/{job_id}/log"
JOB_OUTPUT = "/dlinfra/api/jobs/{job_id}/output"
JOB_RERUN = "/dlinfra/api/jobs/{job_id}/rerun"
BACKENDS = "/dlinfra/api/backends"
ALLOCATIONS = "/dlinfra/api/allocations"
ALLOCATION = "/dlinfra/api/allocations/{allocation_id}"
JOB_ROUTES = [
    ("GET", JOB),
    ("DELETE", JOB),
    ("GET", JOB_LOG),
    ("GET", JOB_OUTPUT),
    ("POST", JOB_RERUN),
]


async def _output(api: Api, job_id: int, fmt: str) -> HTTPResponse:
    """A job's output file: only the status and the headers are checked, against the document."""
    op = api.doc["paths"][JOB_OUTPUT]["get"]
    url = JOB_OUTPUT.format(job_id=job_id).strip("/").split("/")
    response: HTTPResponse = await api.fetch(*url, params={"format": fmt})
    assert response.code == 200
    content_type = response.headers["Content-Type"]
    assert content_type.split(";")[0].strip() in op["responses"]["200"]["content"], content_type
    assert response.headers["Content-Security-Policy"] == "sandbox"
    assert response.headers["Content-Disposition"].startswith(f'inline; filename="{job_id}-')
    return response


async def _hold_every_gpu(api: Api, app: Any) -> int:
    """A kernel of the ledger takes the four GPUs: jobs that need one wait in the queue."""
    if "holder" not in {k.kernel_id for k in app.service.ledger.kernels()}:
        register(app, "holder")
    _, alloc = await api("POST", ALLOCATIONS, body={"kernel_id": "holder", "count": 4}, expect=201)
    assert alloc["state"] == "granted"
    return int(alloc["id"])


def _bobs_job(app: Any, root: Path) -> int:
    """A job of another user, recorded directly (watched by another server: never started)."""
    job = app.service.jobs.book.create(
        NewJob(
            user="bob",
            name="bobs",
            path="nb/ok.ipynb",
            backend="local",
            node=app.service.settings.node,
            server_id="another-server",
            gpus=1,
        ),
        workdir_for=lambda job_id: root / "dlinfra-jobs" / f"{job_id}-bobs",
    )
    return int(job.id)


async def _job_until_ended(
    api: Api, app: Any, job_id: int, timeout: float = 120
) -> tuple[dict[str, Any], set[str]]:
    """Drive the job loop until the job has ended; the job's answers, checked, on the way."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = set()
    while True:
        await app.service.jobs_pass()
        _, job = await api("GET", JOB, path={"job_id": job_id}, expect=200)
        seen.add(job["state"])
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job, seen
        assert loop.time() < deadline, f"job {job_id} is still {job['state']} after {timeout} s"
        await asyncio.sleep(0.1)


async def test_batch_jobs_through_their_life_match_the_document(
    doc: dict[str, Any], jp_fetch: Any, jp_serverapp: Any, jp_root_dir: Path, jp_base_url: str
) -> None:
    api = Api(doc, jp_fetch)
    app = _extension(jp_serverapp)
    owner = app.service.settings.user
    root = Path(jp_root_dir)
    assert app.service.jobs is not None and app.service.jobs.settings.root_dir == root
    ok = "nb/ok.ipynb"
    write_notebook(root / ok, ("lr = 0.1", ["parameters"]), "print(f'lr is {lr}')")
    write_notebook(root / "nb" / "fails.ipynb", "x = 1", "1 / 0")
    (root / "nb" / "broken.ipynb").write_text("{not json", encoding="utf-8")
    (root / "nb" / "script.py").write_text("print(1)\n", encoding="utf-8")

    _, backends = await api("GET", BACKENDS, expect=200, schema_name="Backends")
    assert backends["default"] == "local"
    assert [b["name"] for b in backends["backends"]] == ["local"]
    assert backends["backends"][0]["available"] is True
    assert backends["backends"][0]["places_gpus"] is False

    _, listed = await api("GET", JOBS, expect=200, schema_name="JobList")
    assert listed["jobs"] == []
    _, err = await api("GET", JOBS, params={"state": "done"}, expect=400, schema_name="Error")
    assert err["reason"] == "bad_query"
    for who in ("bob", "*"):
        _, err = await api("GET", JOBS, params={"user": who}, expect=403)
        assert err["reason"] == "not_admin", who
    await api("GET", JOBS, params={"user": owner, "state": "active"}, expect=200)

    for status, reason, body in [
        (400, "invalid", {"path": "../x.ipynb"}),
        (400, "invalid", {"path": str(root / ok)}),
        (400, "invalid", {"path": "nb/script.py"}),
        (400, "invalid", {"path": ok, "backend": "kubernetes"}),
        (400, "invalid", {"path": ok, "sweep": {"lr": 0.1}}),
        (400, "invalid", {"path": ok, "sweep": {"lr": []}}),
        (400, "invalid", {"path": ok, "sweep": {"lr": list(range(11)), "bs": list(range(10))}}),
        (400, "bad_notebook", {"path": "nb/broken.ipynb"}),
        (400, "bad_parameters", {"path": ok, "parameters": {"1x": 1}}),
        (400, "bad_parameters", {"path": ok, "sweep": {"class": [1, 2]}}),
        (400, "bad_field", {"path": ok, "colour": "red"}),
        (400, "bad_field", {}),
        (400, "bad_field", {"path": ""}),
        (400, "bad_field", {"path": ok, "gpus": -1}),
        (400, "bad_field", {"path": ok, "gpus": 1.5}),
        (400, "bad_field", {"path": ok, "priority": 1001}),
        (400, "bad_field", {"path": ok, "priority_class": 5}),
        (400, "unknown_class", {"path": ok, "priority_class": "gold"}),
        (400, "bad_field", {"path": ok, "parameters": [1]}),
        (400, "bad_field", {"path": ok, "sweep": [1]}),
        (400, "bad_field", {"path": ok, "after": "3"}),
        (400, "bad_field", {"path": ok, "after": [0]}),
        (400, "bad_field", {"path": ok, "after": None}),
        (400, "bad_json", [ok]),
        (404, "no_job", {"path": ok, "after": [999]}),
        (404, "no_notebook", {"path": "nb/missing.ipynb"}),
    ]:
        _, err = await api("POST", JOBS, body=body, expect=status, schema_name="Error")
        assert err["reason"] == reason, (body, err)
    _, listed = await api("GET", JOBS, expect=200)
    assert listed["jobs"] == [], "a refused submission records nothing"

    # one job on one of the simulated GPUs, with a parameter: queued while the GPUs are held
    holding = await _hold_every_gpu(api, app)
    response, first = await api(
        "POST",
        JOBS,
        body={
            "path": ok,
            "gpus": 1,
            "parameters": {"lr": 0.5},
            "priority": 5,
            "priority_class": "low",
        },
        expect=201,
    )
    fid = first["id"]
    fpath = {"job_id": fid}
    assert response.headers["Location"] == f"{jp_base_url}dlinfra/api/jobs/{fid}"
    assert api.schema_of(doc["paths"][JOBS]["post"], 201) == {
        "oneOf": [
            {"$ref": "#/components/schemas/JobAnswer"},
            {"$ref": "#/components/schemas/SweepAnswer"},
        ]
    }
    api.validator({"$ref": "#/components/schemas/JobAnswer"}).validate(first)
    assert first["state"] == "queued" and first["user"] == owner and first["name"] == "ok"
    assert first["gpus"] == 1 and first["parameters"] == {"lr": 0.5} and first["priority"] == 5
    assert first["priority_class"] == "low" and first["attempts"] == 0
    assert first["reason"] == "waiting for 1 GPU" and first["started_at"] is None
    assert first["duration_s"] is None and first["group_id"] is None
    assert first["outputs"]["script"] is not None
    assert (root / first["outputs"]["script"]).is_file()
    assert [first["outputs"][k] for k in ("notebook", "html", "log")] == [None, None, None]
    await app.service.jobs_pass()
    _, queued = await api("GET", JOB, path=fpath, expect=200, schema_name="JobAnswer")
    assert queued["state"] == "queued" and queued["allocation_id"] is not None
    assert queued["reason"].startswith("waiting for 1 GPU at position 1"), queued["reason"]
    _, held_for_job = await api(
        "GET",
        ALLOCATION,
        path={"allocation_id": queued["allocation_id"]},
        expect=200,
        schema_name="Allocation",
    )
    assert held_for_job["kind"] == "job" and held_for_job["priority_class"] == "low"
    assert held_for_job["waiting_code"] == "no_free_gpu"
    # where it stands, as its GPU request does (the ledger's queue has no length to say)
    assert queued["position"] == held_for_job["position"] == 1 and queued["queue_length"] is None
    assert (queued["estimated_start"] is None) == (held_for_job["estimated_start"] is None)
    _, log = await api("GET", JOB_LOG, path=fpath, expect=200, schema_name="JobLog")
    assert log["text"] == "" and log["size"] == 0 and log["complete"] is False
    for fmt in ("notebook", "html", "log"):
        _, err = await api(
            "GET", JOB_OUTPUT, path=fpath, params={"format": fmt}, expect=404, schema_name="Error"
        )
        assert err["reason"] == "no_output" and "queued" in err["message"]
    script = await _output(api, fid, "script")
    assert script.headers["Content-Type"].startswith("text/x-python")
    assert b"lr = 0.5" in script.body

    # a job cancelled while queued (it waits for the first); cancelling again changes nothing
    _, doomed = await api(
        "POST", JOBS, body={"path": ok, "name": "doomed", "after": [fid]}, expect=201
    )
    assert doomed["after"] == [fid] and doomed["reason"] == f"waiting for job {fid}"
    dpath = {"job_id": doomed["id"]}
    _, cancelled = await api("DELETE", JOB, path=dpath, expect=200, schema_name="JobAnswer")
    assert cancelled["state"] == "cancelled" and cancelled["reason"] == f"cancelled by {owner}"
    assert cancelled["ended_at"] is not None and cancelled["started_at"] is None
    _, again = await api("DELETE", JOB, path=dpath, expect=200)
    assert again["ended_at"] == cancelled["ended_at"]
    _, log = await api("GET", JOB_LOG, path=dpath, expect=200)
    assert log["complete"] is True and log["text"] == ""

    # a sweep: one job per point, one group; waiting for the first job, then cancelled
    _, sweep = await api(
        "POST",
        JOBS,
        body={
            "path": ok,
            "parameters": {"epochs": 2},
            "sweep": {"lr": [0.1, 0.2], "bs": [8]},
            "after": [fid],
        },
        expect=201,
    )
    api.validator({"$ref": "#/components/schemas/SweepAnswer"}).validate(sweep)
    assert "id" not in sweep and len(sweep["jobs"]) == 2
    assert {j["group_id"] for j in sweep["jobs"]} == {sweep["group_id"]}
    assert [j["name"] for j in sweep["jobs"]] == ["ok[lr=0.1,bs=8]", "ok[lr=0.2,bs=8]"]
    assert sweep["jobs"][1]["parameters"] == {"epochs": 2, "lr": 0.2, "bs": 8}
    for job in sweep["jobs"]:
        _, gone = await api("DELETE", JOB, path={"job_id": job["id"]}, expect=200)
        assert gone["state"] == "cancelled"

    # a job that fails (it needs no GPU: it starts at once), and one that waits on it
    _, failing = await api("POST", JOBS, body={"path": "nb/fails.ipynb"}, expect=201)
    _, child = await api("POST", JOBS, body={"path": ok, "after": failing["id"]}, expect=201)
    assert child["after"] == [failing["id"]]

    # the errors of the single-job routes
    for method, template in JOB_ROUTES:
        _, err = await api(method, template, path={"job_id": "abc"}, expect=400)
        assert err["reason"] == "bad_id", (method, template)
        _, err = await api(method, template, path={"job_id": "999"}, expect=404)
        assert err["reason"] == "no_job", (method, template)
    _, err = await api("GET", JOB_LOG, path=fpath, params={"offset": "-1"}, expect=400)
    assert err["reason"] == "bad_query"
    _, err = await api("GET", JOB_OUTPUT, path=fpath, params={"format": "pdf"}, expect=400)
    assert err["reason"] == "bad_query"
    _, err = await api("POST", JOB_RERUN, path=fpath, body={"gpus": 2}, expect=400)
    assert err["reason"] == "bad_field"
    _, err = await api("POST", JOB_RERUN, path=fpath, body=[], expect=400)
    assert err["reason"] == "bad_json"

    # another user's job: not to be seen or touched, nor to run after
    bobs = await app.service.call(_bobs_job, app, root)
    for method, template in JOB_ROUTES:
        _, err = await api(method, template, path={"job_id": bobs}, expect=403)
        assert err["reason"] == "forbidden", (method, template)
    _, err = await api("POST", JOBS, body={"path": ok, "after": [bobs]}, expect=400)
    assert err["reason"] == "invalid" and "bob" in err["message"]

    # the GPUs free, the loop runs the first job for real (python -m jupyter_dlinfra.jobs.runner)
    await api("DELETE", ALLOCATION, path={"allocation_id": holding}, expect=204)
    done, seen = await _job_until_ended(api, app, fid)
    assert "running" in seen, seen
    assert done["state"] == "succeeded", done
    assert done["reason"] is None and done["error"] is None and done["failed_cell"] is None
    assert done["started_at"] is not None and done["ended_at"] is not None
    assert done["duration_s"] > 0 and done["allocation_id"] == queued["allocation_id"]
    assert all(done["outputs"].values()), done["outputs"]
    failed, _ = await _job_until_ended(api, app, failing["id"])
    assert failed["state"] == "failed" and failed["failed_cell"] == 2, failed
    assert "ZeroDivisionError" in failed["error"] and failed["reason"].startswith("failed in")
    _, child = await api("GET", JOB, path={"job_id": child["id"]}, expect=200)
    assert child["state"] == "cancelled"
    assert child["reason"] == f"job {failing['id']} it runs after failed"
    _, allocs = await api("GET", ALLOCATIONS, expect=200)
    assert allocs["allocations"] == [], "the job's GPU went back"

    _, log = await api("GET", JOB_LOG, path=fpath, expect=200, schema_name="JobLog")
    assert "lr is 0.5" in log["text"], log["text"]
    assert log["state"] == "succeeded" and log["complete"] is True
    assert log["next_offset"] == log["size"] == len(log["text"].encode())
    _, tail = await api("GET", JOB_LOG, path=fpath, params={"offset": log["size"]}, expect=200)
    assert tail["text"] == "" and tail["complete"] is True
    assert tail["next_offset"] == tail["offset"] == log["size"]

    executed = await _output(api, fid, "notebook")
    assert executed.headers["Content-Type"].startswith("application/x-ipynb+json")
    assert "lr is 0.5" in json.dumps(json.loads(executed.body)["cells"])
    report = await _output(api, fid, "html")
    assert report.headers["Content-Type"].startswith("text/html")
    whole = await _output(api, fid, "log")
    assert whole.headers["Content-Type"].startswith("text/plain")
    assert whole.body.decode() == log["text"]
    by_default = await api.fetch(*JOB_OUTPUT.format(job_id=fid).strip("/").split("/"))
    assert by_default.body == executed.body

    # every ended job made a job_ended notice for its owner
    events = {e.detail.get("job"): e for e in app.service.ledger.events() if e.kind == "job_ended"}
    for job_id, level in [(fid, "info"), (failing["id"], "error"), (doomed["id"], "warning")]:
        notice = notice_from_event(
            events[job_id], previous=None, kernels={}, owner_of=lambda _aid: None
        )
        assert notice is not None
        body = notice.to_json()
        api.validator({"$ref": "#/components/schemas/Notice"}).validate(body)
        assert body["kind"] == "job_ended" and body["level"] == level
        assert body["user"] == owner and body["kernel_id"] == f"job-{job_id}"

    # re-running (while the GPUs are held again, so that it stays queued): a new job, same
    # settings; the body may be left out
    holding = await _hold_every_gpu(api, app)
    response, rerun = await api(
        "POST", JOB_RERUN, path=fpath, body={}, expect=201, schema_name="JobAnswer"
    )
    assert response.headers["Location"] == f"{jp_base_url}dlinfra/api/jobs/{rerun['id']}"
    assert rerun["id"] > fid and rerun["state"] == "queued"
    same = ("name", "path", "gpus", "model", "priority", "priority_class", "parameters", "backend")
    assert {k: rerun[k] for k in same} == {k: done[k] for k in same}
    _, rerun2 = await api("POST", JOB_RERUN, path=fpath, expect=201)
    for job in (rerun, rerun2):
        _, gone = await api("DELETE", JOB, path={"job_id": job["id"]}, expect=200)
        assert gone["state"] == "cancelled"
    await api("DELETE", ALLOCATION, path={"allocation_id": holding}, expect=204)
    (root / "nb" / "fails.ipynb").unlink()
    # a re-run runs the snapshot of the first run: the notebook itself may be gone
    _, again = await api("POST", JOB_RERUN, path={"job_id": failing["id"]}, expect=201)
    await api("DELETE", JOB, path={"job_id": again["id"]}, expect=200)
    stopped, _ = await _job_until_ended(api, app, again["id"])
    assert stopped["state"] == "cancelled", stopped

    _, listed = await api("GET", JOBS, expect=200, schema_name="JobList")
    ids = [j["id"] for j in listed["jobs"]]
    assert ids == sorted(ids, reverse=True) and bobs not in ids and fid in ids
    _, active = await api("GET", JOBS, params={"state": "active"}, expect=200)
    assert active["jobs"] == []
    _, ended = await api("GET", JOBS, params={"state": "ended"}, expect=200)
    assert [j["id"] for j in ended["jobs"]] == ids


@pytest.mark.parametrize("dlinfra_config", [ADMIN_CONFIG])
async def test_other_users_jobs_for_an_admin_match_the_document(
    doc: dict[str, Any],
    jp_fetch: Any,
    jp_serverapp: Any,
    jp_root_dir: Path,
    dlinfra_config: dict[str, Any],
) -> None:
    api = Api(doc, jp_fetch)
    app = _extension(jp_serverapp)
    root = Path(jp_root_dir)
    write_notebook(root / "nb" / "ok.ipynb", "print('hello')")
    holding = await _hold_every_gpu(api, app)
    bobs = await app.service.call(_bobs_job, app, root)
    _, mine = await api("POST", JOBS, body={"path": "nb/ok.ipynb", "gpus": 1}, expect=201)

    _, listed = await api("GET", JOBS, expect=200, schema_name="JobList")
    assert [j["id"] for j in listed["jobs"]] == [mine["id"]]
    _, listed = await api("GET", JOBS, params={"user": "*"}, expect=200)
    assert [j["id"] for j in listed["jobs"]] == [mine["id"], bobs]
    _, listed = await api("GET", JOBS, params={"user": "bob", "state": "active"}, expect=200)
    assert [j["user"] for j in listed["jobs"]] == ["bob"]
    _, job = await api("GET", JOB, path={"job_id": bobs}, expect=200, schema_name="JobAnswer")
    assert job["user"] == "bob" and job["state"] == "queued"
    assert job["reason"] == "waiting for 1 GPU"
    _, log = await api("GET", JOB_LOG, path={"job_id": bobs}, expect=200)
    assert log["size"] == 0
    _, cancelled = await api("DELETE", JOB, path={"job_id": bobs}, expect=200)
    assert cancelled["state"] == "cancelled" and cancelled["reason"] == "cancelled by alice"
    _, rerun = await api("POST", JOB_RERUN, path={"job_id": bobs}, expect=201)
    assert rerun["user"] == "alice", "a re-run belongs to whoever asked for it"
    for job_id in (mine["id"], rerun["id"]):
        _, gone = await api("DELETE", JOB, path={"job_id": job_id}, expect=200)
        assert gone["state"] == "cancelled"
    await api("DELETE", ALLOCATION, path={"allocation_id": holding}, expect=204)


@pytest.mark.parametrize("dlinfra_config", [{"simulated_gpus": 4, "job_backends": []}])
async def test_a_server_without_jobs_answers_as_documented(
    doc: dict[str, Any], jp_fetch: Any, jp_serverapp: Any, dlinfra_config: dict[str, Any]
) -> None:
    api = Api(doc, jp_fetch)
    assert _extension(jp_serverapp).service.jobs is None
    for method, template, path, body in [
        ("GET", JOBS, None, None),
        ("POST", JOBS, None, {"path": "nb/ok.ipynb"}),
        ("GET", BACKENDS, None, None),
        *((m, t, {"job_id": "1"}, None) for m, t in JOB_ROUTES),
    ]:
        _, err = await api(method, template, path=path, body=body, expect=503)
        assert err["reason"] == "no_jobs", (method, template)
