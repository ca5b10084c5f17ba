"""How every pod of ours is made: the options the jobs backend and the kernel pod launcher share.

A :class:`PodTemplate` holds the options both take (image, service account, node selector,
tolerations, priority classes, Kueue queue, extra labels, volumes and mounts, pull policy,
resources, GPU resource and product label) and builds the parts of a pod they give alike: our
labels, the environment, the container (its resources with the GPU limit) and the pod spec
(placement: service account, node selector, tolerations, PriorityClass, GPU-model affinity).
What differs (a Job's volumes and command, a kernel's ports) is the caller's.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from jupyter_dlinfra.core.errors import BackendError
from jupyter_dlinfra.kube.api import (
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    MANAGED_BY,
    MANAGER,
    USER_LABEL,
    KubeApi,
    check_env_name,
    gpu_node_affinity,
    label_value,
    node_name_affinity,
)

__all__ = ["PodTemplate"]


class PodTemplate:
    """The shared options of our pods, normalised, and the pod parts they give.

    ``owner`` ("the backend", "the pod launcher") says in errors who sets the ``reserved_labels``
    (refused in ``labels``) and the ``reserved_env`` (refused in a pod's environment).
    """

    def __init__(
        self,
        *,
        owner: str,
        image: str,
        python: str,
        service_account: str | None = None,
        node_selector: Mapping[str, str] | None = None,
        tolerations: Sequence[Mapping[str, Any]] = (),
        priority_classes: Mapping[str, str] | None = None,
        kueue_queue: str | None = None,
        labels: Mapping[str, str] | None = None,
        extra_volumes: Sequence[Mapping[str, Any]] = (),
        extra_volume_mounts: Sequence[Mapping[str, Any]] = (),
        image_pull_policy: str | None = None,
        resources: Mapping[str, Mapping[str, Any]] | None = None,
        gpu_product_label: str = GPU_PRODUCT_LABEL,
        gpu_products: Sequence[str] = (),
        gpu_resource: str = GPU_RESOURCE,
        reserved_labels: Collection[str] = (),
        reserved_env: Collection[str] = (),
    ) -> None:
        self.owner = owner
        self.image = image
        self.python = python
        self.service_account = service_account or None
        self.node_selector = dict(node_selector or {})
        self.tolerations = [dict(t) for t in tolerations]
        self.priority_classes = dict(priority_classes or {})
        self.kueue_queue = kueue_queue or None
        self.labels = dict(labels or {})
        self.extra_volumes = [dict(v) for v in extra_volumes]
        self.extra_volume_mounts = [dict(v) for v in extra_volume_mounts]
        self.image_pull_policy = image_pull_policy or None
        self.resources = {k: dict(v) for k, v in (resources or {}).items()}
        self.gpu_product_label = gpu_product_label
        self.gpu_products = list(gpu_products)
        self.gpu_resource = gpu_resource
        self.reserved_env = frozenset(reserved_env)
        for key in self.labels:
            if key in reserved_labels:
                raise BackendError(f"the label {key} is set by {owner} itself")

    def object_labels(
        self, user: str, own: Mapping[str, str], named: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """``labels``, the managed-by label, ``own`` as they are, and the user and ``named``
        made valid label values (left out when nothing of them is valid)."""
        found = {**self.labels, MANAGED_BY: MANAGER, **own}
        for key, text in {**(named or {}), USER_LABEL: user}.items():
            value = label_value(text)
            if value:
                found[key] = value
        return found

    def env(self, env: Mapping[str, str]) -> list[dict[str, Any]]:
        """``env`` as a container's ``env`` (BackendError for a bad or reserved name)."""
        found: list[dict[str, Any]] = []
        for key, value in env.items():
            check_env_name(key)
            if key in self.reserved_env:
                raise BackendError(f"the environment variable {key} is set by {self.owner}")
            found.append({"name": key, "value": str(value)})
        return found

    def container(
        self,
        name: str,
        command: Sequence[str],
        env: list[dict[str, Any]],
        *,
        gpus: int,
        mounts: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """A container of ``image``: ``resources`` with ``gpus`` as the GPU limit (none for 0),
        the pull policy, ``mounts`` then ``extra_volume_mounts``."""
        limits: dict[str, Any] = dict(self.resources.get("limits", {}))
        if gpus > 0:
            limits[self.gpu_resource] = gpus
        resources = {**self.resources, "limits": limits} if limits else dict(self.resources)
        container: dict[str, Any] = {
            "name": name,
            "image": self.image,
            "command": list(command),
            "env": env,
        }
        if resources:
            container["resources"] = resources
        if self.image_pull_policy:
            container["imagePullPolicy"] = self.image_pull_policy
        volume_mounts = [dict(m) for m in (*mounts, *self.extra_volume_mounts)]
        if volume_mounts:
            container["volumeMounts"] = volume_mounts
        return container

    def pod_spec(
        self,
        api: KubeApi,
        container: Mapping[str, Any],
        *,
        gpus: int,
        model: str | None,
        priority_class: str | None,
        volumes: Sequence[Mapping[str, Any]] = (),
        node: str | None = None,
    ) -> dict[str, Any]:
        """A pod spec that runs ``container`` once, placed by the options; ``priority_class``
        (ours) through ``priority_classes`` (unmapped: the cluster's default); on ``node`` when
        given (the ledger admitted it there: a required node affinity on the node's name, which
        kube-scheduler honours, unlike ``nodeName``, which would skip it and its reasons), else
        a GPU ``model`` through :func:`~jupyter_dlinfra.kube.api.gpu_node_affinity` (an API
        call)."""
        pod: dict[str, Any] = {
            "restartPolicy": "Never",
            "enableServiceLinks": False,
            "containers": [dict(container)],
        }
        all_volumes = [dict(v) for v in (*volumes, *self.extra_volumes)]
        if all_volumes:
            pod["volumes"] = all_volumes
        if self.service_account:
            pod["serviceAccountName"] = self.service_account
        if self.node_selector:
            pod["nodeSelector"] = dict(self.node_selector)
        if self.tolerations:
            pod["tolerations"] = [dict(t) for t in self.tolerations]
        klass = self.priority_classes.get(priority_class or "")
        if klass:
            pod["priorityClassName"] = klass
        if node is not None:
            pod["affinity"] = node_name_affinity(node)
        elif model and gpus > 0:
            pod["affinity"] = gpu_node_affinity(
                api, model, label=self.gpu_product_label, products=self.gpu_products
            )
        return pod
