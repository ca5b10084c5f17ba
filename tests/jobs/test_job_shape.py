"""A distributed job's shape and its ranks' environment (``jobs/shape.py``)."""

from __future__ import annotations

import pytest

from jupyter_dlinfra.jobs.shape import Shape, ShapeError, job_shape, rank_env


@pytest.mark.parametrize(
    ("gpus", "nodes", "per_node", "node_gpus", "expected"),
    [
        # one process, as before: no shape said, and it fits a node
        (4, None, None, 8, None),
        (8, None, None, 8, None),
        (0, None, None, 8, None),
        (16, None, None, None, None),  # node size unknown: never split
        # more than a node: whole nodes
        (16, None, None, 8, Shape(2, 8)),
        (32, None, None, 8, Shape(4, 8)),
        # the shape said
        (None, 2, 8, 8, Shape(2, 8)),
        (16, 2, None, 8, Shape(2, 8)),
        (16, None, 8, 8, Shape(2, 8)),
        (16, 2, 8, 8, Shape(2, 8)),
        (4, 1, None, 8, Shape(1, 4)),
        (None, None, 2, 8, Shape(1, 2)),
    ],
)
def test_a_request_takes_its_shape(
    gpus: int | None,
    nodes: int | None,
    per_node: int | None,
    node_gpus: int | None,
    expected: Shape | None,
) -> None:
    assert job_shape(gpus=gpus, nodes=nodes, gpus_per_node=per_node, node_gpus=node_gpus) == (
        expected
    )


@pytest.mark.parametrize(
    ("gpus", "nodes", "per_node", "node_gpus", "message"),
    [
        (12, None, None, 8, "12 GPUs do not split into whole nodes of 8: ask for a multiple of 8"),
        (3, 2, None, 8, "3 GPUs do not split evenly over 2 nodes"),
        (12, None, 8, 8, "12 GPUs do not make whole nodes of 8"),
        (8, 2, 8, 8, r"gpus \(8\) is not nodes x gpus_per_node \(2 x 8 = 16\)"),
        (None, 2, 16, 8, "16 GPUs per node, but the largest node has 8"),
        (None, 2, None, 8, "say how many GPUs the 2 nodes use"),
        (None, 0, 8, 8, "nodes must be from 1"),
        (None, 2000, 8, 8, "nodes must be from 1 to 1024"),
        (None, 1, 0, 8, "gpus_per_node must be from 1"),
        (None, 1, 65, None, "gpus_per_node must be from 1 to 64"),
    ],
)
def test_a_request_that_does_not_split_is_refused_with_what_to_ask(
    gpus: int | None, nodes: int | None, per_node: int | None, node_gpus: int, message: str
) -> None:
    with pytest.raises(ShapeError, match=message):
        job_shape(gpus=gpus, nodes=nodes, gpus_per_node=per_node, node_gpus=node_gpus)


def test_each_rank_gets_torchruns_environment() -> None:
    shape = Shape(2, 4)
    env = rank_env(
        shape,
        node_rank=1,
        local_rank=2,
        master_addr="node-a",
        master_port=29500,
        node_gpus=["G4", "G5", "G6", "G7"],
        run_id="job-7",
    )
    assert env["WORLD_SIZE"] == "8"
    assert env["RANK"] == "6"  # node 1's ranks are 4..7
    assert env["LOCAL_RANK"] == "2" and env["LOCAL_WORLD_SIZE"] == "4"
    assert env["NODE_RANK"] == env["GROUP_RANK"] == "1" and env["GROUP_WORLD_SIZE"] == "2"
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("node-a", "29500")
    assert env["ROLE_RANK"] == "6" and env["ROLE_WORLD_SIZE"] == "8"
    assert env["TORCHELASTIC_RUN_ID"] == "job-7"
    # every rank of a node sees the node's GPUs and uses device LOCAL_RANK of them
    assert env["CUDA_VISIBLE_DEVICES"] == "G4,G5,G6,G7"
    assert env["DLINFRA_RANK_GPU"] == "G6"


def test_every_rank_of_a_shape_is_numbered_once() -> None:
    shape = Shape(3, 2)
    ranks = [
        int(
            rank_env(
                shape,
                node_rank=n,
                local_rank=lr,
                master_addr="h",
                master_port=1,
                node_gpus=[],
                run_id="r",
            )["RANK"]
        )
        for n in range(3)
        for lr in range(2)
    ]
    assert ranks == list(range(6))
    with pytest.raises(ValueError, match="outside 3 nodes x 2 GPUs"):
        rank_env(
            shape,
            node_rank=3,
            local_rank=0,
            master_addr="h",
            master_port=1,
            node_gpus=[],
            run_id="r",
        )
