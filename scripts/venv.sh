# Sourced by lab.sh and test.sh: a virtualenv in .venv with the project installed (editable).
# The install builds the JupyterLab extension (a minute or more), so it runs only when what it
# consumes changed since the last one (scripts/install_state.py), or with DLINFRA_REINSTALL=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if [ "${DLINFRA_REINSTALL:-0}" = 1 ]; then
    why="DLINFRA_REINSTALL=1"
elif why=$(.venv/bin/python scripts/install_state.py check "$1"); then
    why=""
else
    why=${why:-"its install state could not be read"}
fi
if [ -n "$why" ]; then
    echo "Installing jupyter-dlinfra[$1] into .venv: $why"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[$1]"
    .venv/bin/python scripts/install_state.py record "$1"
fi
