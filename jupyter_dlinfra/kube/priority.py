"""Kubernetes PriorityClasses for our scheduling classes, shared by job Jobs and kernel pods.

Each class of our policy (``interactive``, ``batch``, ``low``...) may have a cluster-wide
``scheduling.k8s.io/v1`` PriorityClass named ``<prefix><class>`` (``dlinfra-batch``) whose value
is the class's priority. :func:`ensure_priority_classes` creates or updates them once, when the
gateway starts, and its answer (our class -> the Kubernetes name) is the ``priority_classes`` of
the jobs backend and of the kernel pod launcher alike; :func:`priority_class_name` gives the name
alone, for a cluster whose administrator made the classes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from jupyter_dlinfra.core.errors import BackendError
from jupyter_dlinfra.core.scheduling.policy import PriorityClass
from jupyter_dlinfra.kube.api import MANAGED_BY, MANAGER, PREFIX, ApiError, KubeApi, dns_name, meta

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = [
    "MAX_PRIORITY_VALUE",
    "ensure_priority_classes",
    "priority_class_manifests",
    "priority_class_name",
]

#: PriorityClass values above this are reserved for the system (Kubernetes' own bound)
MAX_PRIORITY_VALUE = 1_000_000_000


def priority_class_name(klass: str, prefix: str = "dlinfra-") -> str:
    """The Kubernetes PriorityClass for one of our classes: ``dlinfra-batch``."""
    name = dns_name(f"{prefix}{klass}")[:253]
    if not name:
        raise BackendError(f"priority class {klass!r} gives no valid Kubernetes name")
    return name


def priority_class_manifests(
    classes: Iterable[PriorityClass], *, prefix: str = "dlinfra-", preemption: bool = True
) -> list[dict[str, Any]]:
    """``scheduling.k8s.io/v1`` PriorityClass objects for our classes (value = our priority).

    Our ``preemptible`` says whether a class's work may *be* stopped for others; Kubernetes'
    ``preemptionPolicy`` says whether a class's pods may *stop* lower ones, and any pod of a lower
    value may be a victim. So a class gets ``PreemptLowerPriority`` only when there is a class of
    ours below it and every one of them is preemptible: then a preemption never hits work we
    promised not to stop (with the defaults: ``interactive`` and ``batch`` preempt, ``low``, the
    lowest, never does, and so never stops other tenants' pods of a lower value either). Every
    other class, and every class when ``preemption`` is False, gets ``Never``.
    """
    ordered = sorted(classes, key=lambda c: (-c.priority, c.name))
    manifests: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for klass in ordered:
        name = priority_class_name(klass.name, prefix)
        if name in seen:
            raise BackendError(
                f"priority classes {seen[name]!r} and {klass.name!r} both give "
                f"the Kubernetes name {name!r}"
            )
        seen[name] = klass.name
        if not -(2**31) <= klass.priority <= MAX_PRIORITY_VALUE:
            raise BackendError(
                f"priority class {klass.name!r}: a Kubernetes PriorityClass value must be at "
                f"most {MAX_PRIORITY_VALUE}, not {klass.priority}"
            )
        lower = [c for c in ordered if c.priority < klass.priority]
        preempts = preemption and bool(lower) and all(c.preemptible for c in lower)
        manifests.append(
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {
                    "name": name,
                    "labels": {MANAGED_BY: MANAGER},
                    "annotations": {PREFIX + "class": klass.name},
                },
                "value": klass.priority,
                "globalDefault": False,
                "preemptionPolicy": "PreemptLowerPriority" if preempts else "Never",
                "description": (
                    f"jupyter-dlinfra priority class {klass.name!r}"
                    + (" (preemptible)" if klass.preemptible else "")
                ),
            }
        )
    return manifests


def ensure_priority_classes(
    api: ApiClient,
    classes: Iterable[PriorityClass],
    *,
    prefix: str = "dlinfra-",
    preemption: bool = True,
    prune: bool = True,
    timeout: float = 30.0,
) -> dict[str, str]:
    """Create or update the PriorityClasses of our classes; our class -> its Kubernetes name.

    The gateway calls this at start and passes the answer as the backend's
    ``priority_classes``. A class whose value or preemption policy changed is deleted and created
    again (Kubernetes does not let them change; pods that run keep the priority they got). With
    ``prune``, PriorityClasses this function created for classes the policy no longer has go.
    Needs the right to get, list, create, patch and delete ``priorityclasses`` (cluster-wide).
    """
    rest = KubeApi(api, timeout=timeout)
    base = "/apis/scheduling.k8s.io/v1/priorityclasses"
    manifests = priority_class_manifests(classes, prefix=prefix, preemption=preemption)
    names: dict[str, str] = {}
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        names[manifest["metadata"]["annotations"][PREFIX + "class"]] = name
        path = f"{base}/{quote(name, safe='')}"
        try:
            current = rest.request("GET", path, what=f"read PriorityClass {name}")
        except ApiError as err:
            if err.status != 404:
                raise
            current = None
        if current is not None:
            same = (
                current.get("value") == manifest["value"]
                and current.get("preemptionPolicy", "PreemptLowerPriority")
                == manifest["preemptionPolicy"]
            )
            if same:
                patch = {k: manifest[k] for k in ("metadata", "description")}
                rest.request(
                    "PATCH",
                    path,
                    what=f"update PriorityClass {name}",
                    body=patch,
                    content_type="application/merge-patch+json",
                )
                continue
            rest.request("DELETE", path, what=f"replace PriorityClass {name}")
        rest.request("POST", base, what=f"create PriorityClass {name}", body=manifest)
    if prune:
        wanted = set(names.values())
        for item in rest.items(
            base, what="list PriorityClasses", query=[("labelSelector", f"{MANAGED_BY}={MANAGER}")]
        ):
            name = meta(item).get("name", "")
            if name.startswith(prefix) and name not in wanted:
                with contextlib.suppress(ApiError):
                    rest.request(
                        "DELETE",
                        f"{base}/{quote(name, safe='')}",
                        what=f"delete PriorityClass {name}",
                    )
    return names
