"""``jupyter dlinfra``: submit notebooks as jobs and follow them from a terminal; run the gateway.

It talks to a running Jupyter server with jupyter-dlinfra, over the same REST API as JupyterLab:
``--url``/``--token`` (or ``DLINFRA_URL``/``DLINFRA_TOKEN``), else the running server whose root
holds the notebook (from ``jupyter server list``'s runtime files).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jupyter_dlinfra.core.wording import plural
from jupyter_dlinfra.kernel.client import RestClient
from jupyter_dlinfra.kernel.times import when

__all__ = ["main"]

FOLLOW_POLL_S = 1.0


class CliError(Exception):
    pass


class Client(RestClient):
    """The person's client of a Jupyter server's API: their token, failures worded for a shell."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(url, f"token {token}" if token else None, timeout=60)

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        return self.request(method, path, body, query=query)

    def text(self, path: str, **query: Any) -> str:
        return str(self.request("GET", path, query=query, raw=True))

    def _http_error(self, err: urllib.error.HTTPError) -> Exception:
        try:
            message = json.loads(err.read() or b"{}").get("message") or err.reason
        except ValueError:
            message = err.reason
        return CliError(f"{message} (HTTP {err.code})")

    def _unreachable(self, err: OSError) -> Exception:
        return CliError(f"cannot reach the Jupyter server at {self.base_url}: {err}")


def _servers() -> list[dict[str, Any]]:
    from jupyter_server.serverapp import list_running_servers

    return list(list_running_servers())


def connect(args: argparse.Namespace, notebook: Path | None = None) -> tuple[Client, Path | None]:
    """A client of the server to use, and that server's root when known."""
    url = args.url or os.environ.get("DLINFRA_URL")
    token = args.token or os.environ.get("DLINFRA_TOKEN") or os.environ.get("JUPYTER_TOKEN", "")
    if url:
        return Client(url, token), None
    servers = _servers()
    if not servers:
        raise CliError(
            "no running Jupyter server found; start one (make lab, jupyter lab) or pass --url "
            "and --token"
        )
    chosen = servers[0]
    if notebook is not None:
        holding = [
            s for s in servers if notebook.resolve().is_relative_to(Path(s["root_dir"]).resolve())
        ]
        if not holding:
            roots = ", ".join(s["root_dir"] for s in servers)
            raise CliError(f"{notebook} is under no running server's root ({roots})")
        chosen = max(holding, key=lambda s: len(s["root_dir"]))
    return Client(chosen["url"], chosen.get("token", "")), Path(chosen["root_dir"])


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw  # a bare word is a string, as papermill's -p takes it


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    found = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"{what} must look like name=value, not {item!r}")
        found[name] = value
    return found


def cmd_submit(args: argparse.Namespace) -> int:
    notebook = Path(args.notebook)
    if not notebook.is_file():
        raise CliError(f"no notebook {notebook}")
    client, root = connect(args, notebook)
    if root is not None:
        path = notebook.resolve().relative_to(root.resolve()).as_posix()
    else:
        path = args.notebook  # relative to the remote server's root, as given
    body: dict[str, Any] = {"path": path}
    if args.gpus is not None:
        body["gpus"] = args.gpus
    if args.nodes is not None:
        body["nodes"] = args.nodes
    if args.gpus_per_node is not None:
        body["gpus_per_node"] = args.gpus_per_node
    if args.launcher:
        body["launcher"] = args.launcher
    if args.model:
        body["model"] = args.model
    if args.name:
        body["name"] = args.name
    if args.backend:
        body["backend"] = args.backend
    if args.priority:
        body["priority"] = args.priority
    if args.priority_class:
        body["priority_class"] = args.priority_class
    if args.after:
        body["after"] = args.after
    params = {k: _value(v) for k, v in _pairs(args.parameter, "-p").items()}
    if params:
        body["parameters"] = params
    sweep = {k: [_value(x) for x in v.split(",")] for k, v in _pairs(args.sweep, "--sweep").items()}
    if sweep:
        body["sweep"] = sweep
    answer = client.call("POST", "jobs", body)
    jobs = answer.get("jobs", [answer])
    for job in jobs:
        print(f"job {job['id']} {job['name']}: {job['state']} ({job['reason'] or 'starting'})")
    if args.wait:
        return max(_follow(client, job["id"], quiet=len(jobs) > 1) for job in jobs)
    return 0


def _follow(client: Client, job_id: int, *, quiet: bool = False, rank: int | None = None) -> int:
    offset = 0
    ranked = {} if rank is None else {"rank": rank}
    while True:
        chunk = client.call("GET", f"jobs/{job_id}/log", offset=offset, **ranked)
        if chunk["text"] and not quiet:
            sys.stdout.write(chunk["text"])
            sys.stdout.flush()
        offset = chunk["next_offset"]
        if chunk["complete"]:
            job = client.call("GET", f"jobs/{job_id}")
            print(f"job {job_id} {job['state']}" + (f": {job['reason']}" if job["reason"] else ""))
            return 0 if job["state"] == "succeeded" else 1
        if not chunk["text"]:
            time.sleep(FOLLOW_POLL_S)


def cmd_jobs(args: argparse.Namespace) -> int:
    client, _ = connect(args)
    query = {"state": "all" if args.all else "active"}
    if args.everyone:
        query["user"] = "*"
    for job in client.call("GET", "jobs", **query)["jobs"]:
        gpus = plural(job["gpus"], "GPU")
        if job.get("world_size"):
            # a distributed job: its ranks (or processes in roles), e.g. "16 GPUs x16"
            gpus += f" x{job['world_size']}"
        # the queue's estimate (the ledger's, or SLURM's own) after why it waits
        start = job.get("estimated_start")
        estimate = f" (estimated start {when(start, relative=True)})" if start else ""
        print(
            f"{job['id']:>5}  {job['state']:<10} {gpus:<7} {job['backend']:<6} "
            f"{job['name']}  {job['reason'] or ''}{estimate}"
        )
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    client, _ = connect(args)
    if args.follow:
        return _follow(client, args.job, rank=args.rank)
    ranked = {} if args.rank is None else {"rank": args.rank}
    print(client.call("GET", f"jobs/{args.job}/log", **ranked)["text"], end="")
    return 0


def _hours(value: float) -> str:
    return f"{value:,.1f}"


def _wait(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def cmd_report(args: argparse.Namespace) -> int:
    client, _ = connect(args)
    query = {"since": args.since, "by": args.by}
    if args.until:
        query["until"] = args.until
    if args.user:
        query["user"] = args.user
    if args.csv:
        sys.stdout.write(client.text("reports/usage", format="csv", **query))
        return 0
    report = client.call("GET", "reports/usage", **query)
    whose = f"{report['user']}'s" if report["user"] else "everyone's"
    print(
        f"GPU usage by {report['by']}, {whose}, {report['since']} to {report['until']} "
        f"(idle: under {report['idle_util_percent']:g} %)"
    )
    header = (
        f"{report['by']:<24} {'GPU-h':>9} {'busy':>9} {'eff':>5} {'idle':>9} {'reclaim':>8} "
        f"{'grants':>6} {'wait p50':>8} {'p95':>6} {'jobs ok/failed/cancelled':>24}"
    )
    print(header)
    for row in [*report["rows"], {**report["total"], "key": "(total)"}]:
        efficiency = "-" if row["efficiency"] is None else f"{row['efficiency'] * 100:.0f}%"
        jobs = f"{row['jobs_succeeded']}/{row['jobs_failed']}/{row['jobs_cancelled']}"
        print(
            f"{row['key'][:24]:<24} {_hours(row['gpu_hours']):>9} "
            f"{_hours(row['busy_gpu_hours']):>9} {efficiency:>5} "
            f"{_hours(row['idle_gpu_hours']):>9} {_hours(row['reclaimed_gpu_hours']):>8} "
            f"{row['grants']:>6} {_wait(row['wait_p50_s']):>8} {_wait(row['wait_p95_s']):>6} "
            f"{jobs:>24}"
        )
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    client, _ = connect(args)
    job = client.call("DELETE", f"jobs/{args.job}")
    print(f"job {job['id']}: {job['state']} ({job['reason']})")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jupyter dlinfra", description=__doc__.split("\n")[0])
    p.add_argument("--url", help="the Jupyter server (default: the running one)")
    p.add_argument("--token", help="its token (default: from its runtime file)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("submit", help="run a notebook as a batch job")
    s.add_argument("notebook")
    s.add_argument("--gpus", type=int, help="GPUs (default: the notebook's %%gpu line, else 0)")
    s.add_argument(
        "--nodes",
        type=int,
        help="run as ranks (one per GPU, torchrun's environment) over this many nodes",
    )
    s.add_argument("--gpus-per-node", type=int, help="ranks (GPUs) per node of a distributed job")
    s.add_argument(
        "--launcher",
        choices=["torchrun"],
        help="start a distributed job's ranks with one torchrun per node (PyTorch needed "
        "where the job runs); default: the job's own launcher, with torchrun's environment",
    )
    s.add_argument("--model", help="GPU model, e.g. A100")
    s.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE")
    s.add_argument(
        "--sweep", action="append", default=[], metavar="NAME=V1,V2", help="one job per value"
    )
    s.add_argument("--after", type=int, action="append", default=[], metavar="JOB")
    s.add_argument("--backend", help="local, slurm, ... (default: the server's)")
    s.add_argument("--priority", type=int, default=0, help="order among your own jobs")
    s.add_argument(
        "--class",
        dest="priority_class",
        help="scheduling class, e.g. batch or low (default: the server's job class)",
    )
    s.add_argument("--name")
    s.add_argument("--wait", action="store_true", help="follow the log until the job ends")
    s.set_defaults(run=cmd_submit)

    j = sub.add_parser("jobs", help="list your jobs")
    j.add_argument("--all", action="store_true", help="ended jobs too")
    j.add_argument("--everyone", action="store_true", help="every user's (admins)")
    j.set_defaults(run=cmd_jobs)

    lg = sub.add_parser("log", help="print a job's log")
    lg.add_argument("job", type=int)
    lg.add_argument("-f", "--follow", action="store_true")
    lg.add_argument("--rank", type=int, help="one rank's own log (a distributed job)")
    lg.set_defaults(run=cmd_log)

    c = sub.add_parser("cancel", help="cancel a job")
    c.add_argument("job", type=int)
    c.set_defaults(run=cmd_cancel)

    r = sub.add_parser(
        "report",
        help="GPU-hours held, busy and idle, waits and jobs (yours; everyone's for admins)",
    )
    r.add_argument("--since", default="7d", help="7d, 12h, 2w, an ISO date or epoch (7d)")
    r.add_argument("--until", help="as --since (default: now)")
    r.add_argument("--by", default="user", choices=("user", "group", "class", "model", "node"))
    r.add_argument("--user", help="one person's (admins)")
    r.add_argument("--csv", action="store_true", help="the table as CSV, for a spreadsheet")
    r.set_defaults(run=cmd_report)

    from jupyter_dlinfra.gateway.tokens_cli import add_parser as add_token_parser

    add_token_parser(sub)
    sub.add_parser(
        "gateway",
        help="run the team gateway (jupyter-server options follow; --help-all lists them)",
        add_help=False,
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["gateway"]:
        # jupyter-server parses its own options
        from jupyter_dlinfra.gateway.app import main as gateway_main

        gateway_main(argv[1:])
        return 0
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except CliError as err:
        print(f"jupyter dlinfra: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
