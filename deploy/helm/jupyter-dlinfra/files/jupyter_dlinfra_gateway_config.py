# The gateway's configuration, from the chart's values (settings.json beside this file).
# `jupyter dlinfra gateway` sets DLInfra.gateway itself. Values' extraConfig is appended below.
# (Helm drops values set to null, hence .get() for the optional ones.)
import json
import os

c = get_config()  # noqa: F821
with open(os.path.join(os.path.dirname(__file__), "settings.json")) as f:
    s = json.load(f)


def _set(options, key, value):
    if value not in (None, "", [], {}):
        options[key] = value


c.ServerApp.ip = "0.0.0.0"
c.ServerApp.port = s["port"]
c.ServerApp.allow_remote_access = True
c.ServerApp.root_dir = "/srv/dlinfra"
# admins could otherwise open a shell in the pod that holds the gateway's cluster credentials
c.ServerApp.terminals_enabled = False
# Only the plain Python kernel, which runs in a pod. The package's "Python 3 (N GPUs)"
# kernelspecs name the local provisioner and would run INSIDE this pod, with its database URL
# and service-account token: hidden here, and to be removed from the image (docs/deployment.md).
c.KernelSpecManager.allowed_kernelspecs = set(s["allowedKernelspecs"])

if s.get("hubApiUrl"):
    c.GatewayIdentityProvider.hub_api_url = s["hubApiUrl"]
c.DLInfra.admin_users = s["adminUsers"]
c.DLInfra.db_url = os.environ["DLINFRA_DB_URL"]

# kernels as pods
c.DLInfra.kernel_backend = "kubernetes"
c.DLInfra.api_url = s["apiUrl"]
c.DLInfra.pod_interval = float(s["podInterval"])
c.DLInfra.keep_kernel_pods_on_stop = bool(s["keepKernelPodsOnStop"])
kp = s["kernelPods"]
kernel_pods = {
    "namespace": s["namespace"],
    "image": s["image"],
    "startup_timeout_s": float(kp.get("startupTimeoutSeconds") or 300),
}
_set(kernel_pods, "image_pull_policy", s["imagePullPolicy"])
_set(kernel_pods, "priority_classes", s["priorityClasses"])
_set(kernel_pods, "resources", kp.get("resources"))
_set(kernel_pods, "node_selector", kp.get("nodeSelector"))
_set(kernel_pods, "tolerations", kp.get("tolerations"))
_set(kernel_pods, "extra_volumes", kp.get("extraVolumes"))
_set(kernel_pods, "extra_volume_mounts", kp.get("extraVolumeMounts"))
if s["kueue"].get("kernelPods"):
    _set(kernel_pods, "kueue_queue", s["kueue"].get("queue"))
c.DLInfra.kernel_pods = kernel_pods

# GPU inventory from the nodes, utilisation from dcgm-exporter through Prometheus
telemetry = {"prometheus_url": s["prometheus"].get("url") or ""}
_set(telemetry, "prometheus_filter", s["prometheus"].get("filter"))
c.DLInfra.cluster_telemetry = telemetry

# batch jobs as batch/v1 Jobs; the jobs' volume is mounted at jobs_dir here and in job pods
jb = s["jobs"]
jobs = {
    "namespace": s["namespace"],
    "image": s["image"],
    "workdir_claim": s["jobsClaim"],
    "service_account": s["workloadServiceAccount"],
}
_set(jobs, "image_pull_policy", s["imagePullPolicy"])
_set(jobs, "priority_classes", s["priorityClasses"])
_set(jobs, "resources", jb.get("resources"))
_set(jobs, "node_selector", jb.get("nodeSelector"))
_set(jobs, "tolerations", jb.get("tolerations"))
_set(jobs, "extra_volumes", jb.get("extraVolumes"))
_set(jobs, "extra_volume_mounts", jb.get("extraVolumeMounts"))
_set(jobs, "active_deadline_s", jb.get("activeDeadlineSeconds"))
_set(jobs, "ttl_after_finished_s", jb.get("ttlSecondsAfterFinished"))
_set(jobs, "kueue_queue", s["kueue"].get("queue"))
c.DLInfra.job_backends = ["kubernetes"]
c.DLInfra.default_backend = "kubernetes"
c.DLInfra.jobs_dir = s["jobsDir"]
c.DLInfra.backend_options = {"kubernetes": jobs}
