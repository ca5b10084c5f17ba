"""A notebook cell whose ranks really find each other: a sum over every rank, through TCP.

What ``torch.distributed.all_reduce`` does over the ``env://`` rendezvous, written with the
standard library (a full PyTorch cannot be installed where the tests run): rank 0 listens at
``MASTER_ADDR:MASTER_PORT``, every other rank connects (retrying while rank 0's kernel starts),
sends ``RANK + 1`` and reads back the sum, which every rank prints in one line::

    rank 1/4 local 1 node 0 gpus GPU-a,GPU-b,GPU-c,GPU-d sum 10

So a test sees that each rank had its own ``RANK`` and ``LOCAL_RANK``, the same world, its node's
GPUs, and that they met at the address the launcher gave them.
"""

from __future__ import annotations

__all__ = ["ALLREDUCE_CELL", "expected_sum"]

ALLREDUCE_CELL = r"""
import os, socket, time
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
value = rank + 1
if rank == 0:
    server = socket.create_server((addr, port))
    server.settimeout(120)
    peers = [server.accept()[0] for _ in range(world - 1)]
    total = value + sum(int(p.makefile().readline()) for p in peers)
    for p in peers:
        p.sendall(f"{total}\n".encode())
        p.close()
    server.close()
else:
    deadline = time.time() + 120
    while True:
        try:
            conn = socket.create_connection((addr, port), timeout=5)
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
    conn.sendall(f"{value}\n".encode())
    total = int(conn.makefile().readline())
    conn.close()
print(
    f"rank {rank}/{world} local {os.environ['LOCAL_RANK']} node {os.environ['NODE_RANK']} "
    f"gpus {os.environ.get('CUDA_VISIBLE_DEVICES', '')} sum {total}"
)
"""


def expected_sum(world_size: int) -> int:
    """What every rank prints as ``sum``: 1 + 2 + ... + world_size."""
    return world_size * (world_size + 1) // 2
