"""A distributed job's shape (nodes x GPUs per node) and the environment each of its ranks gets.

A job is *distributed* when its submission says how many nodes it spans (``nodes``, or
``gpus_per_node``, or ``%gpu 16 --nodes 2`` in the notebook), or when it asks for more GPUs than
one node has: then its GPUs are split into whole nodes, one rank per GPU. A job that says neither
stays one process with all its GPUs, as before (a notebook using ``DataParallel``).

Each rank gets the environment ``torchrun`` gives its workers (:func:`rank_env`), so
``torch.distributed.init_process_group("nccl")`` (the ``env://`` rendezvous) and Hugging Face
Accelerate work unchanged. Every rank on a node sees that node's granted GPUs, in the same order,
as under ``torchrun`` in an allocation, and uses device ``LOCAL_RANK`` of them: code that calls
``torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))`` would fail if each rank saw its own GPU
only. ``DLINFRA_RANK_GPU`` names the rank's own GPU for code that wants it.

Standard library only: the in-job launcher imports it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["MAX_GPUS_PER_NODE", "MAX_NODES", "Shape", "ShapeError", "job_shape", "rank_env"]

#: the most nodes one job may span, and GPUs (ranks) per node: beyond them a request is a typo,
#: refused rather than queued for ever
MAX_NODES = 1024
MAX_GPUS_PER_NODE = 64


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
) -> Shape | None:
    """The shape a submission asks for, or None for a one-process job.

    ``gpus``: the job's GPUs in all (the submission's, else the notebook's ``%gpu`` line);
    ``nodes``/``gpus_per_node``: as given (None: not said); ``node_gpus``: the GPUs of the
    largest node the job may run on (None: unknown, then ``gpus`` alone never splits).
    Raises :class:`ShapeError` with what to ask instead."""
    for name, value, most in (
        ("nodes", nodes, MAX_NODES),
        ("gpus_per_node", gpus_per_node, MAX_GPUS_PER_NODE),
    ):
        if value is not None and not 1 <= value <= most:
            raise ShapeError(f"{name} must be from 1 to {most}, not {value}")
    if nodes is None and gpus_per_node is None:
        if not gpus or node_gpus is None or gpus <= node_gpus:
            return None
        if gpus % node_gpus:
            raise ShapeError(
                f"{_plural(gpus, 'GPU')} do not split into whole nodes of {node_gpus}: ask for "
                f"a multiple of {node_gpus}, or say the shape (nodes and gpus_per_node, "
                f"--nodes N --gpus-per-node G)"
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
    the GPUs granted on the rank's node, in order; empty on a node without them)."""
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
        "CUDA_VISIBLE_DEVICES": ",".join(node_gpus),
    }
    if local_rank < len(node_gpus):
        env["DLINFRA_RANK_GPU"] = node_gpus[local_rank]
    return env
