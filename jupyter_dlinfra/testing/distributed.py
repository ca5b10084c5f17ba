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

__all__ = ["ALLREDUCE_CELL", "ROLES_CELL", "expected_sum"]

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
    # the sum comes once every rank has connected, however late the last one starts: the
    # connect's own timeout must not cut that wait short
    conn.settimeout(120)
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


#: A job with roles, ``server`` (1, ready when its port is open) then ``worker`` (after it): the
#: server sums what every worker sends (its ROLE_RANK + 1) and tells each the sum. A worker
#: connects once, without retrying: had it started before the server was ready, it would fail.
#: The launcher's readiness probe connects and closes at once: the server skips connections
#: that say nothing.
ROLES_CELL = r"""
import os, socket
role = os.environ["ROLE_NAME"]
if role == "server":
    server = socket.create_server(("127.0.0.1", int(os.environ["DLINFRA_ROLE_PORT"])))
    server.settimeout(120)
    workers = int(os.environ["WORLD_SIZE"]) - int(os.environ["ROLE_WORLD_SIZE"])
    total, peers = 0, []
    while len(peers) < workers:
        conn, _ = server.accept()
        line = conn.makefile().readline()
        if not line:
            conn.close()
            continue
        total += int(line)
        peers.append(conn)
    for conn in peers:
        conn.sendall(f"{total}\n".encode())
        conn.close()
    print(f"server rank {os.environ['RANK']} total {total}")
else:
    host, port = os.environ["DLINFRA_ROLE_SERVER_ADDRS"].split(",")[0].rsplit(":", 1)
    conn = socket.create_connection((host, int(port)), timeout=10)
    conn.settimeout(120)  # the total comes once every worker has connected
    conn.sendall(f"{int(os.environ['ROLE_RANK']) + 1}\n".encode())
    total = conn.makefile().readline().strip()
    print(
        f"worker {os.environ['ROLE_RANK']} rank {os.environ['RANK']} "
        f"gpus {os.environ.get('CUDA_VISIBLE_DEVICES', '')} total {total}"
    )
"""
