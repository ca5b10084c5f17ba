#!/usr/bin/env bash
# Start a throw-away single-node SLURM (slurmctld + slurmd + its own munged) with fake GPUs.
#
#   SLURM_TEST_DIR=/tmp/my-slurm NGPU=4 scripts/slurm-up.sh    # prints SLURM_CONF=...
#   export SLURM_CONF=/tmp/my-slurm/etc/slurm.conf; sbatch --gres=gpu:2 --wrap 'env'
#   SLURM_TEST_DIR=/tmp/my-slurm scripts/slurm-down.sh
#
# Everything lives under SLURM_TEST_DIR (default ${TMPDIR:-/tmp}/dlinfra-slurm; the first
# argument, when given, wins): configuration, state, logs, the munge key and socket, and the
# fake GPUs (device files named nvidia0..N-1, which SLURM hands out as GRES "gpu": a job asking
# --gres=gpu:2 gets CUDA_VISIBLE_DEVICES=0,1). Nothing is written to /etc/slurm or /etc/munge,
# so several clusters can run side by side on one machine.
#
# Settings (environment): NGPU (4), SLURM_CPUS (16), SLURMCTLD_PORT and SLURMD_PORT (default:
# free ports picked at random between 20000 and 60000 on first start, then kept in the
# configuration), SLURM_NODE (the node's name, default `hostname -s`), SLURM_NODES (1).
#
# SLURM_NODES=N > 1: N nodes on this one machine, each a real slurmd in its own network
# namespace (Debian's SLURM is built without --enable-multiple-slurmd, so two slurmd cannot share
# a network stack). A bridge dlbr<T> in this namespace (10.213.<T>.1, where slurmctld answers)
# links N namespaces dlinfra<T>n<K> (10.213.<T>.<K+1>), T chosen from the directory. Each slurmd
# also has its own host name (a UTS namespace): the node's name, dln1..dlnN, which
# /etc/netns/dlinfra<T>n<K>/hosts (mounted as that node's /etc/hosts) resolves to
# the node's address on every node, as a cluster's DNS would (and this machine's name to
# slurmctld's). Each node has NGPU fake GPUs. Needs
# ip(8), nsenter(1) and unshare(1); slurm-down.sh removes the namespaces, the links and the hosts files.
#
# Idempotent: daemons already running are left alone and an existing configuration is kept
# (stop the cluster and remove the directory to change NGPU or the ports). Installs Debian's
# slurmctld, slurmd, slurm-client and munge with apt-get when they are missing (as root).
# Must run as root: slurmd starts jobs as their owner.
set -euo pipefail

D=${1:-${SLURM_TEST_DIR:-${TMPDIR:-/tmp}/dlinfra-slurm}}
NGPU=${NGPU:-4}
CPUS=${SLURM_CPUS:-16}
NODE=${SLURM_NODE:-$(hostname -s)}
NODES=${SLURM_NODES:-1}

die() { echo "slurm-up: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (slurmd starts jobs as their owner)"
[[ "$NGPU" =~ ^[0-9]+$ ]] || die "NGPU must be a number, not '$NGPU'"
[[ "$NODES" =~ ^[1-9][0-9]?$ ]] || die "SLURM_NODES must be a number from 1 to 99, not '$NODES'"

# --- packages ---------------------------------------------------------------------------------
missing=()
command -v slurmctld >/dev/null || missing+=(slurmctld)
command -v slurmd >/dev/null || missing+=(slurmd)
command -v sbatch >/dev/null || missing+=(slurm-client)
command -v munged >/dev/null || missing+=(munge)
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    echo "slurm-up: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
SLURMCTLD=$(command -v slurmctld)
SLURMD=$(command -v slurmd)
MUNGED=$(command -v munged)

# --- layout -----------------------------------------------------------------------------------
mkdir -p "$D"
D=$(cd "$D" && pwd -P)
mkdir -p "$D/etc" "$D/spool/ctld" "$D/spool/d" "$D/log" "$D/run" "$D/dev" "$D/munge"

# --- several nodes: a network namespace per slurmd (see above) --------------------------------
CTLD_ADDR=127.0.0.1
NAMES=("$NODE")
ADDRS=(127.0.0.1)
if [ "$NODES" -gt 1 ]; then
    T=$(( $(printf '%s' "$D" | cksum | cut -d' ' -f1) % 200 + 20 ))
    NET=10.213.$T
    CTLD_ADDR=$NET.1
    NAMES=()
    ADDRS=()
    for k in $(seq 1 "$NODES"); do
        NAMES+=("dln$k")
        ADDRS+=("$NET.$((k + 1))")
    done
    command -v ip >/dev/null || die "SLURM_NODES > 1 needs ip(8) (Debian's iproute2)"
    command -v unshare >/dev/null || die "SLURM_NODES > 1 needs unshare(1) (util-linux)"
    echo "$T" >"$D/run/net"
    if ! ip link show "dlbr$T" >/dev/null 2>&1; then
        ip link add "dlbr$T" type bridge || die "cannot make a bridge (needs CAP_NET_ADMIN)"
        ip addr add "$CTLD_ADDR/24" dev "dlbr$T"
        ip link set "dlbr$T" up
    fi
    for k in $(seq 1 "$NODES"); do
        ns=dlinfra${T}n$k
        if ! ip netns list | grep -qw "$ns"; then
            ip netns add "$ns" || die "cannot make the network namespace $ns"
            ip link add "dlv${T}n$k" type veth peer name "dlp${T}n$k"
            ip link set "dlv${T}n$k" master "dlbr$T" up
            ip link set "dlp${T}n$k" netns "$ns"
            ip netns exec "$ns" ip link set "dlp${T}n$k" name eth0
            ip netns exec "$ns" ip addr add "${ADDRS[$((k - 1))]}/24" dev eth0
            ip netns exec "$ns" ip link set eth0 up
            ip netns exec "$ns" ip link set lo up
        fi
        mkdir -p "/etc/netns/$ns" "$D/spool/d/dln$k" "$D/dev/dln$k"
        {
            echo "127.0.0.1 localhost"
            echo "$CTLD_ADDR $NODE"
            for j in $(seq 1 "$NODES"); do echo "${ADDRS[$((j - 1))]} dln$j"; done
        } >"/etc/netns/$ns/hosts"
    done
fi
# jobs run as their owner, who must reach the configuration (and the munge socket)
chmod 755 "$D" "$D/etc" "$D/munge"
CONF=$D/etc/slurm.conf

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {  # a port nobody listens on, not in the list given
    local port
    for _ in $(seq 200); do
        port=$((20000 + RANDOM % 40000))
        [[ " $* " == *" $port "* ]] && continue
        port_in_use "$port" || { echo "$port"; return 0; }
    done
    die "no free TCP port found"
}

# --- fake GPUs: character devices like /dev/null (plain files where mknod is not allowed) ---
# (one set per node when there are several: dev/dlnK/nvidia*)
devdir() { if [ "$NODES" -gt 1 ]; then echo "$D/dev/$1"; else echo "$D/dev"; fi; }
if [ "$NGPU" -gt 0 ]; then
    for name in "${NAMES[@]}"; do
        dev=$(devdir "$name")
        for i in $(seq 0 $((NGPU - 1))); do
            [ -e "$dev/nvidia$i" ] || mknod "$dev/nvidia$i" c 1 3 2>/dev/null \
                || touch "$dev/nvidia$i"
        done
    done
fi

# --- configuration (written once; ports kept across restarts) ---------------------------------
if [ ! -f "$CONF" ]; then
    CTLD_PORT=${SLURMCTLD_PORT:-$(free_port)}
    D_PORT=${SLURMD_PORT:-$(free_port "$CTLD_PORT")}
    if [ "$NGPU" -gt 0 ]; then
        GRES="Gres=gpu:$NGPU"
        GRES_TYPES="GresTypes=gpu"
    else
        GRES=""
        GRES_TYPES=""
    fi
    if [ "$NODES" -gt 1 ]; then
        # one slurmd per node on this machine: their own spool, pid and log files
        PER_NODE="%n"
        PARTITION_NODES="dln[1-$NODES]"
    else
        PER_NODE=""
        PARTITION_NODES=$NODE
    fi
    NODE_LINES=""
    for k in $(seq 0 $((NODES - 1))); do
        NODE_LINES+="NodeName=${NAMES[$k]} NodeAddr=${ADDRS[$k]} CPUs=$CPUS "
        NODE_LINES+="RealMemory=$((CPUS * 200)) $GRES State=UNKNOWN"$'\n'
    done
    cat >"$CONF.tmp" <<CONF
# Written by jupyter-dlinfra's scripts/slurm-up.sh: a test cluster of $NODES node(s).
ClusterName=dlinfra
SlurmctldHost=$NODE($CTLD_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munge.socket
StateSaveLocation=$D/spool/ctld
SlurmdSpoolDir=$D/spool/d${PER_NODE:+/$PER_NODE}
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd${PER_NODE:+-$PER_NODE}.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd${PER_NODE:+-$PER_NODE}.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# finished jobs stay visible to squeue/scontrol for an hour (there is no slurmdbd)
MinJobAge=3600
KillWait=5
SchedulerType=sched/backfill
# start jobs within a second of their submission (the default waits up to 3 s), and let
# backfill plan (and so estimate pending jobs' starts, squeue --start) every second, not 30 s
SchedulerParameters=batch_sched_delay=0,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
DefMemPerCPU=100
# --nice must change the order: multifactor priority with a non-zero weight
PriorityType=priority/multifactor
PriorityWeightPartition=100000
PriorityWeightAge=1000
PriorityWeightFairshare=0
# a job whose parent failed is cancelled, not left pending for ever
DependencyParameters=kill_invalid_depend
# the node may claim more CPUs and memory than the machine has
SlurmdParameters=config_overrides
$GRES_TYPES
${NODE_LINES}PartitionName=debug Nodes=$PARTITION_NODES Default=YES MaxTime=INFINITE State=UP
CONF
    {
        echo "AutoDetect=off"
        if [ "$NGPU" -gt 0 ]; then
            for name in "${NAMES[@]}"; do
                echo "NodeName=$name Name=gpu File=$(devdir "$name")/nvidia[0-$((NGPU - 1))]"
            done
        fi
    } >"$D/etc/gres.conf"
    chmod 644 "$CONF.tmp" "$D/etc/gres.conf"
    mv "$CONF.tmp" "$CONF"
fi
export SLURM_CONF=$CONF

# --- munge: our own daemon, key and socket ----------------------------------------------------
if ! alive "$D/munge/munged.pid"; then
    if [ ! -s "$D/munge/munge.key" ]; then
        dd if=/dev/urandom of="$D/munge/munge.key" bs=1 count=1024 status=none
    fi
    chmod 600 "$D/munge/munge.key"
    rm -f "$D/munge/munge.socket" "$D/munge/munge.socket.lock"
    # --force: the directory may sit below paths munged finds too open (e.g. pytest's tmp dirs)
    "$MUNGED" --force --socket="$D/munge/munge.socket" --key-file="$D/munge/munge.key" \
        --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" \
        --seed-file="$D/munge/munged.seed" 2>>"$D/log/munged.err" \
        || die "munged did not start: $(cat "$D/log/munged.err" "$D/munge/munged.log" 2>/dev/null)"
fi
# the socket must be usable by job owners that are not root
chmod 777 "$D/munge/munge.socket" 2>/dev/null || true

# --- SLURM daemons ----------------------------------------------------------------------------
if ! alive "$D/run/slurmctld.pid"; then
    "$SLURMCTLD" -f "$CONF" || die "slurmctld did not start: $(tail -20 "$D/log/slurmctld.log")"
fi
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
scontrol ping >/dev/null 2>&1 || die "slurmctld does not answer: $(tail -20 "$D/log/slurmctld.log")"
if [ "$NODES" -gt 1 ]; then
    for k in $(seq 1 "$NODES"); do
        name=dln$k
        alive "$D/run/slurmd-$name.pid" && continue
        # its own network, host name and /etc/hosts: the node's (not `ip netns exec`, which
        # mounts a /sys without this machine's cgroups, which slurmd needs)
        ns=dlinfra${T}n$k
        nsenter --net="/run/netns/$ns" unshare --mount --uts sh -c \
            "mount --bind /etc/netns/$ns/hosts /etc/hosts && hostname $name \
             && exec $SLURMD -f $CONF -N $name" \
            || die "slurmd of $name did not start: $(tail -20 "$D/log/slurmd-$name.log")"
    done
elif ! alive "$D/run/slurmd.pid"; then
    "$SLURMD" -f "$CONF" -N "$NODE" || die "slurmd did not start: $(tail -20 "$D/log/slurmd.log")"
fi
for name in "${NAMES[@]}"; do
    state=""
    for _ in $(seq 150); do
        state=$(sinfo -h -n "$name" -o %T 2>/dev/null || true)
        case "$state" in idle | mixed | allocated | completing) break ;; esac
        sleep 0.1
    done
    case "$state" in
        idle | mixed | allocated | completing) ;;
        *) die "node $name is '$state', not idle: $(tail -20 "$D/log/slurmctld.log")" ;;
    esac
done
echo "SLURM_CONF=$CONF"
