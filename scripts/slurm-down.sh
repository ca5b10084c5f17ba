#!/usr/bin/env bash
# Stop a cluster started by scripts/slurm-up.sh: cancel its jobs, then stop slurmd, slurmctld
# and munged (by the ids in their pid files). Files are kept (logs under $SLURM_TEST_DIR/log);
# set SLURM_TEST_CLEAN=1 to remove the directory as well. Stopping a stopped cluster is a no-op.
#
#   SLURM_TEST_DIR=/tmp/my-slurm scripts/slurm-down.sh      (or: scripts/slurm-down.sh DIR)
set -uo pipefail

D=${1:-${SLURM_TEST_DIR:-${TMPDIR:-/tmp}/dlinfra-slurm}}
[ -d "$D" ] || exit 0
D=$(cd "$D" && pwd -P)
export SLURM_CONF=$D/etc/slurm.conf

pid_of() { [ -f "$1" ] && cat "$1"; }
alive() { local pid; pid=$(pid_of "$1") && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

# Jobs first: their slurmstepd processes would outlive slurmd otherwise.
if [ -f "$SLURM_CONF" ] && alive "$D/run/slurmctld.pid" && scontrol ping >/dev/null 2>&1; then
    jobs=$(squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING -o %i 2>/dev/null)
    if [ -n "$jobs" ]; then
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for _ in $(seq 100); do
            [ -z "$(squeue -h -t RUNNING,COMPLETING,CONFIGURING,SUSPENDED -o %i 2>/dev/null)" ] \
                && break
            sleep 0.1
        done
    fi
fi

# SIGTERM to all three at once (each takes about 2 s to exit), then wait up to 10 s for each
# and SIGKILL what is left.
pids=()
for file in "$D"/run/slurmd*.pid "$D/run/slurmctld.pid" "$D/munge/munged.pid"; do
    if alive "$file"; then
        pid=$(pid_of "$file")
        kill "$pid" 2>/dev/null && pids+=("$pid")
    fi
done
for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
done

# a cluster of several nodes (SLURM_NODES): its namespaces, links and hosts files
if [ -f "$D/run/net" ]; then
    T=$(cat "$D/run/net")
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^dlinfra${T}n[0-9]+$"); do
        ip netns del "$ns" 2>/dev/null
        rm -rf "/etc/netns/$ns"
    done
    ip link del "dlbr$T" 2>/dev/null
    rm -f "$D/run/net"
fi

if [ "${SLURM_TEST_CLEAN:-0}" = 1 ]; then
    rm -rf "$D"
fi
exit 0
