"""A distributed job's shape and its ranks' environment (``jobs/shape.py``)."""

from __future__ import annotations

import pytest

from jupyter_dlinfra.jobs.shape import (
    Role,
    Shape,
    ShapeError,
    job_shape,
    parse_roles,
    rank_env,
    role_envs,
    roles_gpus,
    roles_world,
)


@pytest.mark.parametrize(
    ("gpus", "nodes", "per_node", "node_gpus", "expected"),
    [
        # one process, as before: no shape said, and it fits a node
        (4, None, None, 8, None),
        (8, None, None, 8, None),
        (0, None, None, 8, None),
        # more than a node, without a shape: one process (refused as too many by the ledger)
        (16, None, None, 8, None),
        (16, None, None, None, None),
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


def test_more_gpus_than_a_node_are_whole_nodes_where_the_backend_runs_several() -> None:
    assert job_shape(gpus=16, nodes=None, gpus_per_node=None, node_gpus=8, split=True) == Shape(
        2, 8
    )
    # a node's worth or less stays one process; unknown nodes never split
    assert job_shape(gpus=8, nodes=None, gpus_per_node=None, node_gpus=8, split=True) is None
    assert job_shape(gpus=16, nodes=None, gpus_per_node=None, node_gpus=None, split=True) is None
    with pytest.raises(
        ShapeError,
        match=r"12 GPUs are more than one node has \(8\) and do not "
        "make whole nodes of 8: ask for 8 or 16",
    ):
        job_shape(gpus=12, nodes=None, gpus_per_node=None, node_gpus=8, split=True)


@pytest.mark.parametrize(
    ("gpus", "nodes", "per_node", "node_gpus", "message"),
    [
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
    # a pod's GPUs are what its device plugin exposed: without names, the rank's
    # CUDA_VISIBLE_DEVICES is left as inherited (empty would hide them all)
    unnamed = rank_env(
        shape, node_rank=0, local_rank=0, master_addr="h", master_port=1, node_gpus=[], run_id="r"
    )
    assert "CUDA_VISIBLE_DEVICES" not in unnamed and "DLINFRA_RANK_GPU" not in unnamed
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


def test_roles_are_read_in_order_with_their_defaults() -> None:
    roles = parse_roles(
        [
            {"name": "server"},
            {"name": "worker", "replicas": 4, "gpus": 2, "after": "server", "ready": "file"},
        ]
    )
    assert roles == (
        Role("server", replicas=1, gpus=0, after=(), ready="port"),
        Role("worker", replicas=4, gpus=2, after=("server",), ready="file"),
    )
    assert (roles_gpus(roles), roles_world(roles)) == (8, 5)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "roles must be a non-empty list"),
        ({"name": "x"}, "roles must be a non-empty list"),
        (["worker"], r"roles\[0\] must be an object"),
        ([{"name": "Worker"}], "name must be lowercase letters"),
        ([{"name": "w", "colour": 1}], "unknown field"),
        ([{"name": "w"}, {"name": "w"}], "two roles named 'w'"),
        ([{"name": "w", "replicas": 0}], r"replicas must be a whole number from 1 to 64"),
        ([{"name": "w", "gpus": True}], r"gpus must be a whole number from 0"),
        ([{"name": "w", "after": "server"}], "'server', which is not a role listed before it"),
        ([{"name": "w", "after": "w"}], "not a role listed before it"),
        ([{"name": "w", "ready": "soon"}], "ready must be 'port' or 'file'"),
        ([{"name": f"r{i}"} for i in range(17)], "at most 16 roles"),
        ([{"name": "a", "replicas": 40}, {"name": "b", "replicas": 25}], "at most 64 processes"),
    ],
)
def test_roles_that_cannot_run_are_refused_with_why(raw: object, message: str) -> None:
    with pytest.raises(ShapeError, match=message):
        parse_roles(raw)


def test_each_process_of_a_job_with_roles_knows_every_roles_addresses() -> None:
    roles = parse_roles([{"name": "ps"}, {"name": "worker", "replicas": 2, "gpus": 1}])
    envs = role_envs(
        roles, host="h", ports=[7000, 7001, 7002], gpus=["G0", "G1"], ready_dir="/r", run_id="j"
    )
    assert [(e["ROLE_NAME"], e["ROLE_RANK"], e["RANK"]) for e in envs] == [
        ("ps", "0", "0"),
        ("worker", "0", "1"),
        ("worker", "1", "2"),
    ]
    assert {e["DLINFRA_ROLE_WORKER_ADDRS"] for e in envs} == {"h:7001,h:7002"}
    assert {e["DLINFRA_ROLE_PS_ADDRS"] for e in envs} == {"h:7000"}
    # each process its own GPUs (the roles' sizes differ), its own port and ready file
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["", "G0", "G1"]
    assert [e["DLINFRA_ROLE_PORT"] for e in envs] == ["7000", "7001", "7002"]
    assert envs[2]["DLINFRA_READY_FILE"] == "/r/2"
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"], e["WORLD_SIZE"]) for e in envs} == {
        ("h", "7000", "3")
    }
    # a pod's GPUs are not named: its device plugin exposes them as devices 0 and 1
    unnamed = role_envs(roles, host="h", ports=[1, 2, 3], gpus=[], ready_dir="/r", run_id="j")
    assert [e["CUDA_VISIBLE_DEVICES"] for e in unnamed] == ["", "0", "1"]
