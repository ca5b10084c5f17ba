#!/usr/bin/env bash
# Install and start JupyterLab with jupyter-dlinfra; simulated GPUs when this machine has none.
set -euo pipefail
source "$(dirname "$0")/venv.sh" lab
if ! .venv/bin/python -c "import pynvml; pynvml.nvmlInit()" >/dev/null 2>&1; then
    export DLINFRA_SIMULATED_GPUS=${DLINFRA_SIMULATED_GPUS:-8}
    echo "No NVIDIA driver found: running on ${DLINFRA_SIMULATED_GPUS} simulated GPUs."
fi
args=(--ServerApp.ip="${DLINFRA_LAB_IP:-127.0.0.1}" --ServerApp.port="${DLINFRA_LAB_PORT:-8888}")
# whoever runs this administers their own ledger: the reclaim policy panel shows
args+=(--DLInfra.admin_users="$(id -un)")
if [ "$(id -u)" = 0 ]; then
    args+=(--allow-root)
fi
exec .venv/bin/jupyter lab "${args[@]}" "$@"
