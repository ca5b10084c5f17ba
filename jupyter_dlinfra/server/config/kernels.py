"""Options of the kernels this server starts: their provisioner, where they run, their pods."""

from __future__ import annotations

from traitlets import Bool, Dict, Enum, Float, HasTraits

__all__ = ["KernelOptions"]


class KernelOptions(HasTraits):
    hide_unallocated_gpus = Bool(
        True,
        config=True,
        help="Start kernels with CUDA_VISIBLE_DEVICES='' until the ledger grants them GPUs, so "
        "that no kernel uses a GPU it does not hold. False leaves the variable untouched for "
        "kernels without a grant.",
    )
    default_provisioner = Bool(
        True,
        config=True,
        help="Make the dlinfra provisioner the default for kernelspecs that name none (the stock "
        "python3 kernel), unless KernelProvisionerFactory.default_provisioner_name is set.",
    )

    # -- kernels as Kubernetes pods (team gateway; server/pod_kernels.py) ---------------------

    kernel_backend = Enum(
        ["local", "kubernetes"],
        "local",
        config=True,
        help="Where the gateway runs kernels: 'local' (processes on the gateway's node, GPUs "
        "from its ledger) or 'kubernetes' (one pod per kernel, GPUs placed by the cluster's "
        "scheduler; needs gateway = True). With 'kubernetes', the GPU inventory comes from the "
        "cluster's nodes (see cluster_telemetry) and the pod provisioner becomes the default.",
    )
    kernel_pods = Dict(
        config=True,
        help="Options of kernel pods (kube/kernel_pods.py PodLauncher): namespace, "
        "image, python, service_account, node_selector, tolerations, priority_classes (our "
        "class -> PriorityClass), kueue_queue, labels, resources, kubeconfig, context, "
        "startup_timeout_s, admission (the ledger admits GPU pods in the team's order; on "
        "unless kueue_queue is set). Example: {'namespace': 'dlinfra', 'image': "
        "'ghcr.io/me/dl:1'}.",
    )
    cluster_telemetry = Dict(
        config=True,
        help="Options of the cluster's GPU inventory and utilisation (telemetry/kubernetes.py): "
        "prometheus_url (a Prometheus that scrapes NVIDIA's dcgm-exporter; empty: inventory "
        "only, no live utilisation), prometheus_filter, node_selector, kubeconfig, context.",
    )
    kubernetes_priority_classes = Enum(
        ["off", "map", "ensure"],
        "off",
        config=True,
        help="Our priority classes as Kubernetes PriorityClasses named dlinfra-<class>, on kernel "
        "pods and Jobs. 'map': use them (an admin created them, e.g. from deploy/kubernetes); "
        "'ensure': the gateway creates or updates them at start from the scheduling policy "
        "(needs the right to manage priorityclasses); 'off': pods get the cluster's default "
        "priority. A priority_classes entry in kernel_pods or backend_options wins.",
    )
    pod_interval = Float(
        1.0,
        config=True,
        help="Seconds between two readings of every kernel pod (one list call each time).",
    )
    keep_kernel_pods_on_stop = Bool(
        False,
        config=True,
        help="With kernel_backend = 'kubernetes': a clean stop of the gateway (SIGTERM, so also "
        "an update of its Deployment) leaves the kernel pods running, with their GPUs, for the "
        "next gateway to take back at start, as after a crash. Only when a gateway always comes "
        "back (a Deployment): pods left by a gateway that never returns hold their GPUs.",
    )
