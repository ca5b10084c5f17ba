#!/usr/bin/env bash
# Install everything the test suite needs, then run all of it: lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: a PostgreSQL server (the ledger's store tests run on it as well as on
# SQLite), Debian's chromium (the browser tests drive a real JupyterLab with it), SLURM with
# munge (the slurm backend's tests run a single-node cluster and one of two nodes in network
# namespaces, which needs iproute2 and util-linux: scripts/slurm-up.sh) and Prometheus (the
# cluster telemetry's tests read simulated DCGM metrics through a real one)
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v slurmctld >/dev/null || missing+=(slurmctld)
command -v slurmd >/dev/null || missing+=(slurmd)
command -v sbatch >/dev/null || missing+=(slurm-client)
command -v munged >/dev/null || missing+=(munge)
command -v ip >/dev/null || missing+=(iproute2)
command -v nsenter >/dev/null || missing+=(util-linux)
[ -x /usr/bin/prometheus ] || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        # the daemons must not start at install (no config yet): the test fixtures start them
        guard=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            guard=/usr/sbin/policy-rc.d
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        [ -z "$guard" ] || rm -f "$guard"
    else
        echo "missing system packages: ${missing[*]} (install them with apt-get)" >&2
        exit 1
    fi
fi

# a real Kubernetes control plane for the gateway's tests: built once per machine from Debian's
# kubernetes source package (several minutes the first time; reused after)
scripts/k8s/build.sh

# JupyterHub's proxy, for the test of Hub tokens at the gateway (a real Hub needs it to start)
[ -x build/chp/node_modules/.bin/configurable-http-proxy ] ||
    npm install --prefix build/chp --no-audit --no-fund --silent configurable-http-proxy

source scripts/venv.sh test
.venv/bin/ruff check jupyter_dlinfra tests benchmarks
.venv/bin/ruff format --check jupyter_dlinfra tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
