#!/usr/bin/env bash
# Install everything the test suite needs, then run all of it: lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL server binaries: the ledger's store tests run on PostgreSQL as well as SQLite
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "PostgreSQL server binaries are missing: install the 'postgresql' package" >&2
        exit 1
    fi
fi

source scripts/venv.sh test
.venv/bin/ruff check jupyter_dlinfra tests benchmarks
.venv/bin/ruff format --check jupyter_dlinfra tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
