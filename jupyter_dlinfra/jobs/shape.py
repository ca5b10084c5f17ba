"""A distributed job's shape (nodes x GPUs per node) and the environment each of its ranks gets.

A job is *distributed* when its submission says how many nodes it spans (``nodes``, or
``gpus_per_node``, or ``%gpu 16 --nodes 2`` in the notebook): one rank per GPU. A job that says
neither stays one process with all its GPUs, as before (a notebook using ``DataParallel``).

Each rank gets the environment ``torchrun`` gives its workers (:func:`rank_env`), so
``torch.distributed.init_process_group("nccl")`` (the ``env://`` rendezvous) and Hugging Face
Accelerate work unchanged. Every rank on a node sees that node's granted GPUs, in the same order,
as under ``torchrun`` in an allocation, and uses device ``LOCAL_RANK`` of them: code that calls
``torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))`` would fail if each rank saw its own GPU
only. ``DLINFRA_RANK_GPU`` names the rank's own GPU for code that wants it.

Standard library only: the in-job launcher imports it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_GPUS_PER_NODE",
    "MAX_NODES",
    "READY_KINDS",
    "TORCHRUN",
    "Role",
    "Shape",
    "ShapeError",
    "job_shape",
    "parse_roles",
    "rank_env",
    "role_envs",
    "roles_gpus",
    "roles_world",
]

#: the most nodes one job may span, and GPUs (ranks) per node: beyond them a request is a typo,
#: refused rather than queued for ever
MAX_NODES = 1024
MAX_GPUS_PER_NODE = 64
#: a job's ``launcher`` (spec.json) when one ``torchrun`` per node starts the node's ranks;
#: without one, ``jobs/ranks.py`` starts them itself with torchrun's environment
TORCHRUN = "torchrun"


class ShapeError(ValueError):
    """A request that does not split into whole nodes; ``str()`` says what to ask instead."""


@dataclass(frozen=True)
class Shape:
    """``nodes`` x ``gpus_per_node``, one rank per GPU."""

    nodes: int
    gpus_per_node: int

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def world_size(self) -> int:
        return self.gpus

    def describe(self) -> str:
        plural = "s" if self.nodes != 1 else ""
        return f"{self.nodes} node{plural} x {self.gpus_per_node} GPUs ({self.world_size} ranks)"


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"


def job_shape(
    *,
    gpus: int | None,
    nodes: int | None,
    gpus_per_node: int | None,
    node_gpus: int | None,
    split: bool = False,
) -> Shape | None:
    """The shape a submission asks for, or None for a one-process job (neither ``nodes`` nor
    ``gpus_per_node`` said, and it fits a node).

    ``gpus``: the job's GPUs in all (the submission's, else the notebook's ``%gpu`` line);
    ``nodes``/``gpus_per_node``: as given (None: not said); ``node_gpus``: the GPUs of the
    largest node the job may run on (None: unknown, not checked). With ``split`` (a backend
    that runs jobs of several nodes), more GPUs than ``node_gpus`` without a shape are split
    into whole nodes of ``node_gpus``, one rank per GPU.
    Raises :class:`ShapeError` with what to ask instead."""
    for name, value, most in (
        ("nodes", nodes, MAX_NODES),
        ("gpus_per_node", gpus_per_node, MAX_GPUS_PER_NODE),
    ):
        if value is not None and not 1 <= value <= most:
            raise ShapeError(f"{name} must be from 1 to {most}, not {value}")
    if nodes is None and gpus_per_node is None:
        if not split or not gpus or node_gpus is None or gpus <= node_gpus:
            return None
        if gpus % node_gpus:
            whole = (gpus // node_gpus + 1) * node_gpus
            raise ShapeError(
                f"{_plural(gpus, 'GPU')} are more than one node has ({node_gpus}) and do not "
                f"make whole nodes of {node_gpus}: ask for {gpus - gpus % node_gpus} or {whole}, "
                "or say the shape (nodes and gpus_per_node, --nodes N --gpus-per-node G)"
            )
        return Shape(gpus // node_gpus, node_gpus)
    if gpus_per_node is not None:
        _fits_a_node(gpus_per_node, node_gpus)
    else:
        assert nodes is not None
        if not gpus:
            raise ShapeError(
                f"say how many GPUs the {_plural(nodes, 'node')} use: gpus_per_node "
                "(--gpus-per-node G), or gpus in all"
            )
        if gpus % nodes:
            raise ShapeError(
                f"{_plural(gpus, 'GPU')} do not split evenly over {_plural(nodes, 'node')}: "
                f"ask for a multiple of {nodes} GPUs, or say gpus_per_node"
            )
        gpus_per_node = gpus // nodes
    if nodes is None:
        if gpus and gpus % gpus_per_node:
            raise ShapeError(
                f"{_plural(gpus, 'GPU')} do not make whole nodes of {gpus_per_node}: ask for a "
                f"multiple of {gpus_per_node} GPUs, or say nodes"
            )
        nodes = gpus // gpus_per_node if gpus else 1
    if gpus and gpus != nodes * gpus_per_node:
        raise ShapeError(
            f"gpus ({gpus}) is not nodes x gpus_per_node ({nodes} x {gpus_per_node} = "
            f"{nodes * gpus_per_node}): give one or the other, or make them agree"
        )
    _fits_a_node(gpus_per_node, node_gpus)
    return Shape(nodes, gpus_per_node)


def _fits_a_node(gpus_per_node: int, node_gpus: int | None) -> None:
    if node_gpus is not None and gpus_per_node > node_gpus:
        raise ShapeError(
            f"{gpus_per_node} GPUs per node, but the largest node has {node_gpus}: ask for at "
            f"most {node_gpus} per node, on more nodes"
        )


def rank_env(
    shape: Shape,
    *,
    node_rank: int,
    local_rank: int,
    master_addr: str,
    master_port: int,
    node_gpus: Sequence[str],
    run_id: str,
) -> Mapping[str, str]:
    """The environment of one rank, as ``torchrun`` sets it for its workers (``node_gpus``:
    the GPUs granted on the rank's node, in order; empty where the node's environment does
    not name them: a Kubernetes pod, whose device plugin exposes just its GPUs, or a node
    without any. ``CUDA_VISIBLE_DEVICES`` is then left as the rank inherits it, not emptied,
    which would hide the pod's GPUs from every rank)."""
    if not 0 <= node_rank < shape.nodes or not 0 <= local_rank < shape.gpus_per_node:
        raise ValueError(f"rank {node_rank}/{local_rank} is outside {shape.describe()}")
    rank = node_rank * shape.gpus_per_node + local_rank
    env = {
        "WORLD_SIZE": str(shape.world_size),
        "RANK": str(rank),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(shape.gpus_per_node),
        "NODE_RANK": str(node_rank),
        "GROUP_RANK": str(node_rank),
        "GROUP_WORLD_SIZE": str(shape.nodes),
        "ROLE_NAME": "default",
        "ROLE_RANK": str(rank),
        "ROLE_WORLD_SIZE": str(shape.world_size),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "TORCHELASTIC_RUN_ID": run_id,
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0",
    }
    if node_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(node_gpus)
    if local_rank < len(node_gpus):
        env["DLINFRA_RANK_GPU"] = node_gpus[local_rank]
    return env


# -- roles ----------------------------------------------------------------------------------------

#: a role's name: it becomes part of environment variable names (DLINFRA_ROLE_<NAME>_ADDRS)
_ROLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
#: how a role says it is ready for the roles that start after it
READY_KINDS = ("port", "file")
MAX_ROLES = 16
#: processes of a job with roles, over all its roles (each is a kernel on the node)
MAX_REPLICAS = 64


@dataclass(frozen=True)
class Role:
    """A group of processes of a job with roles: ``replicas`` of them, each with ``gpus`` GPUs,
    started once every role of ``after`` is ready (each of its processes listens on its
    ``DLINFRA_ROLE_PORT``, or has written its ``DLINFRA_READY_FILE``, as ``ready`` says)."""

    name: str
    replicas: int = 1
    gpus: int = 0
    after: tuple[str, ...] = ()
    ready: str = "port"

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "replicas": self.replicas,
            "gpus": self.gpus,
            "after": list(self.after),
            "ready": self.ready,
        }


def parse_roles(raw: object) -> tuple[Role, ...]:
    """A submission's ``roles`` (a list of objects), checked; raises :class:`ShapeError` saying
    what is wrong. A role may only start after roles listed before it (so there is no cycle)."""
    if not isinstance(raw, list) or not raw:
        raise ShapeError("roles must be a non-empty list of {name, replicas, gpus, after, ready}")
    if len(raw) > MAX_ROLES:
        raise ShapeError(f"a job has at most {MAX_ROLES} roles, not {len(raw)}")
    roles: list[Role] = []
    for i, item in enumerate(raw):
        where = f"roles[{i}]"
        if not isinstance(item, dict):
            raise ShapeError(f'{where} must be an object such as {{"name": "worker"}}')
        unknown = set(item) - {"name", "replicas", "gpus", "after", "ready"}
        if unknown:
            raise ShapeError(
                f"{where}: unknown field(s) {', '.join(sorted(unknown))}; expected name, "
                "replicas, gpus, after and ready"
            )
        name = item.get("name")
        if not isinstance(name, str) or not _ROLE_NAME.match(name):
            raise ShapeError(
                f"{where}: name must be lowercase letters, digits and _ (starting with a letter, "
                f"32 at most), such as 'worker', not {name!r}"
            )
        if any(r.name == name for r in roles):
            raise ShapeError(f"{where}: there are two roles named {name!r}")
        replicas = _count(item.get("replicas", 1), f"{where}.replicas", 1, MAX_REPLICAS)
        gpus = _count(item.get("gpus", 0), f"{where}.gpus", 0, MAX_GPUS_PER_NODE)
        after_raw = item.get("after", [])
        after = (after_raw,) if isinstance(after_raw, str) else after_raw
        if not isinstance(after, list | tuple) or not all(isinstance(a, str) for a in after):
            raise ShapeError(f"{where}.after must be a role's name or a list of them")
        earlier = {r.name for r in roles}
        for a in after:
            if a not in earlier:
                raise ShapeError(
                    f"{where}: '{name}' starts after {a!r}, which is not a role listed before it"
                )
        ready = item.get("ready", "port")
        if ready not in READY_KINDS:
            raise ShapeError(f"{where}.ready must be 'port' or 'file', not {ready!r}")
        roles.append(Role(name, replicas, gpus, tuple(dict.fromkeys(after)), ready))
    if roles_world(roles) > MAX_REPLICAS:
        raise ShapeError(
            f"a job with roles runs at most {MAX_REPLICAS} processes on its node, not "
            f"{roles_world(roles)}"
        )
    return tuple(roles)


def _count(value: object, what: str, least: int, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise ShapeError(f"{what} must be a whole number from {least} to {most}, not {value!r}")
    return value


def roles_gpus(roles: Sequence[Role]) -> int:
    return sum(r.replicas * r.gpus for r in roles)


def roles_world(roles: Sequence[Role]) -> int:
    return sum(r.replicas for r in roles)


def role_envs(
    roles: Sequence[Role],
    *,
    host: str,
    ports: Sequence[int],
    gpus: Sequence[str],
    ready_dir: str,
    run_id: str,
) -> list[dict[str, str]]:
    """The environment of every process of a job with roles, in rank order (the roles' order,
    replica by replica): ``ports`` one per process (its ``DLINFRA_ROLE_PORT``), ``gpus`` the
    job's granted GPUs (each process gets the next ``role.gpus`` of them). Rank 0 is the first
    role's first replica: MASTER_ADDR/MASTER_PORT point at it."""
    world = roles_world(roles)
    if len(ports) != world:
        raise ValueError(f"{len(ports)} ports for {world} processes")
    addrs: dict[str, list[str]] = {}
    rank = 0
    for role in roles:
        addrs[role.name] = [f"{host}:{ports[rank + i]}" for i in range(role.replicas)]
        rank += role.replicas
    shared = {f"DLINFRA_ROLE_{name.upper()}_ADDRS": ",".join(a) for name, a in addrs.items()}
    envs: list[dict[str, str]] = []
    rank = 0
    taken = 0
    if not gpus:
        # not named (a Kubernetes pod: its device plugin exposes its GPUs as devices 0..N-1)
        gpus = [str(i) for i in range(roles_gpus(roles))]
    for role in roles:
        for replica in range(role.replicas):
            mine = list(gpus[taken : taken + role.gpus])
            taken += role.gpus
            envs.append(
                {
                    **shared,
                    "WORLD_SIZE": str(world),
                    "RANK": str(rank),
                    "LOCAL_RANK": str(rank),
                    "LOCAL_WORLD_SIZE": str(world),
                    "NODE_RANK": "0",
                    "GROUP_RANK": "0",
                    "GROUP_WORLD_SIZE": "1",
                    "ROLE_NAME": role.name,
                    "ROLE_RANK": str(replica),
                    "ROLE_WORLD_SIZE": str(role.replicas),
                    "MASTER_ADDR": host,
                    "MASTER_PORT": str(ports[0]),
                    "TORCHELASTIC_RUN_ID": run_id,
                    "DLINFRA_ROLE_PORT": str(ports[rank]),
                    "DLINFRA_READY_FILE": f"{ready_dir}/{rank}",
                    "CUDA_VISIBLE_DEVICES": ",".join(mine),
                }
            )
            rank += 1
    return envs
