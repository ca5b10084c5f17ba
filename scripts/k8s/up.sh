#!/usr/bin/env bash
# Run a local Kubernetes control plane (and fake GPU nodes) in the foreground, for development:
#
#   scripts/k8s/up.sh --dir /tmp/k8s --nodes gpu-a=4,gpu-b=2:NVIDIA-H100-80GB-HBM3
#   # prints KUBECONFIG=/tmp/k8s/kubeconfig; stays up until Ctrl-C (or SIGTERM)
#
# etcd, kube-apiserver, kube-scheduler and kube-controller-manager run on free loopback ports;
# a node agent plays the kubelet of the --nodes and runs their pods as local processes (see
# jupyter_dlinfra/testing/k8s.py). The binaries come from scripts/k8s/build.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python -m jupyter_dlinfra.testing.k8s up "$@"
