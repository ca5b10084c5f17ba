#!/usr/bin/env bash
# Install (once; again only after the install's inputs change) and start JupyterLab with
# jupyter-dlinfra; simulated GPUs when this machine has none.
set -euo pipefail
called_from=$PWD
source "$(dirname "$0")/venv.sh" lab
if ! .venv/bin/python -c "import pynvml; pynvml.nvmlInit()" >/dev/null 2>&1; then
    export DLINFRA_SIMULATED_GPUS=${DLINFRA_SIMULATED_GPUS:-8}
    echo "No NVIDIA driver found: running on ${DLINFRA_SIMULATED_GPUS} simulated GPUs."
fi
# notebooks, their checkpoints and the jobs' directories go here, not into the checkout
notebooks=$(cd "$called_from" && mkdir -p "${DLINFRA_LAB_DIR:-$HOME/dlinfra-notebooks}" &&
    cd "${DLINFRA_LAB_DIR:-$HOME/dlinfra-notebooks}" && pwd)
echo "Notebooks and jobs in ${notebooks} (DLINFRA_LAB_DIR=... for another folder)."
args=(--ServerApp.ip="${DLINFRA_LAB_IP:-127.0.0.1}" --ServerApp.port="${DLINFRA_LAB_PORT:-8888}")
args+=(--ServerApp.root_dir="$notebooks")
# whoever runs this administers their own ledger: the reclaim policy panel shows
args+=(--DLInfra.admin_users="$(id -un)")
if [ "$(id -u)" = 0 ]; then
    args+=(--allow-root)
fi
exec .venv/bin/jupyter lab "${args[@]}" "$@"
