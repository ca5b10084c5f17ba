"""The ``slurm`` backend: each job is a SLURM batch job, placed (GPUs included) by SLURM.

The backend talks to SLURM through its command-line tools only (``sbatch``, ``squeue``,
``scontrol``, ``scancel``), run as the server's user with the server's environment plus
``env`` (e.g. ``SLURM_CONF``). No accounting database (slurmdbd) is needed.

Submitting writes ``<workdir>/job.sbatch``, a batch script whose ``#SBATCH`` lines say what the
job needs and whose body exports ``launch.env`` and ``exec``\\ s ``launch.argv``, then runs
``sbatch --parsable`` on it:

- ``--gres=gpu:N`` (``gres_name`` replaces ``gpu``), or ``gpu:<type>:N`` when ``gres_types``
  maps the requested GPU model to a GRES type. Without ``gres_types`` the model is not passed
  on (any GPU); with it, a model it does not know is refused.
- ``--dependency=afterok:ID:ID`` for ``launch.after`` plus ``--kill-on-invalid-dep=yes``: a child
  whose parent fails is cancelled by SLURM (reason ``DependencyNeverSatisfied``). SLURM treats
  a dependency on a job id it no longer knows as satisfied, so parents SLURM forgot are checked
  here first (through their ``status.json``): succeeded ones are left out, others refuse.
- ``--nice`` from ``launch.priority`` (larger priority runs first, a larger nice runs later)::

      nice = clamp(nice_base - priority * nice_step, low, 2147483645)

  with ``low = -2147483645`` when negative nice values are allowed, else 0. SLURM accepts a
  negative nice only from root, SlurmUser and operators (others get "Invalid --nice value"),
  so ``allow_negative_nice`` defaults to whether the server runs as root. The defaults
  (``nice_base=0``, ``nice_step=100``) leave priority 0 at SLURM's own nice 0; an unprivileged
  site that wants positive priorities to count sets ``nice_base`` (e.g. ``10000``: priorities up
  to 100 then move jobs up). Nice only orders jobs where the cluster's multifactor priority has
  other non-zero weights (with ``priority/basic`` jobs run in submission order).
- ``--qos`` from ``qos_by_class``: our scheduling class -> a SLURM QOS (``{"interactive":
  "high", "batch": "normal", "low": "scavenger"}``); for a class it does not name, from
  ``qos_by_priority``: the QOS of the largest threshold not above the priority (``{0: "normal",
  10: "high"}``: priority 12 -> ``high``, -1 -> no ``--qos``).
- ``--account`` from ``account_by_group``: the first of the user's groups (in the order of the
  server's ``user_groups``) that it names -> that SLURM account (``{"vision": "cv-lab"}``); else
  ``account``; else SLURM's default account of the user.
- ``--time`` from ``time_limit`` (SLURM's forms: ``90``, ``4:00:00``, ``2-00:00:00``): SLURM's
  backfill can only plan starts, and so estimate when pending jobs start, for jobs that have
  one; without it the partition's ``DefaultTime`` applies.
- ``--partition`` and ``extra_args`` (put on the command line, so that they override the
  script's lines).

QOS, account and time limit are SLURM's to enforce: QOS limits and priorities, and accounts'
fair share, need SLURM's accounting (slurmdbd); without it SLURM accepts the names and records
the account, and orders jobs by what its multifactor plugin has (age, partition, nice).

Polling asks one ``squeue --states=all`` for all the handles at once, and, when some of them
pend, one ``squeue --states=PENDING`` for the pending jobs of their partitions: each pending job's
position among them and SLURM's estimated start (``squeue --start``), see
:mod:`~jupyter_dlinfra.backends.slurm_queue`. It maps SLURM's states:

- PENDING, CONFIGURING, REQUEUED, REQUEUE_HOLD, REQUEUE_FED, RESV_DEL_HOLD, SPECIAL_EXIT ->
  PENDING, reason: SLURM's (``Resources``, ``Priority``, ``Dependency``...), prefixed with the
  state when it is not PENDING;
- RUNNING, COMPLETING -> RUNNING; SUSPENDED, STOPPED, SIGNALING, STAGE_OUT, RESIZING ->
  RUNNING with the state as reason;
- COMPLETED -> SUCCEEDED (exit code 0);
- FAILED, NODE_FAIL, OUT_OF_MEMORY, TIMEOUT, BOOT_FAIL, DEADLINE, PREEMPTED -> FAILED, reason:
  the state (unless FAILED), SLURM's reason and the exit code (``NonZeroExitCode, exit code 3``);
- CANCELLED, REVOKED -> CANCELLED, reason: SLURM's (``DependencyNeverSatisfied`` for a child
  of a failed parent), else ``cancelled``;
- a job SLURM no longer knows -> what its ``status.json`` says, else LOST.

Exit codes come from squeue's ``exit_code`` (a wait status): a normal exit gives its code, a
death by signal N gives ``-N`` (like :attr:`subprocess.Popen.returncode`). SLURM forgets ended
jobs after its ``MinJobAge`` (300 s by default); after that the backend reads
``<workdir>/status.json``, which the in-job runner writes (``{"state": "succeeded" | "failed" |
"cancelled", "exit_code": ..., "error": ...}``; the error is the reason of a job that did not
succeed).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jupyter_dlinfra.backends.base import (
    BackendError,
    BackendState,
    BackendStatus,
    JobBackend,
    JobHandle,
    JobLaunch,
)
from jupyter_dlinfra.backends.local import status_from_file
from jupyter_dlinfra.backends.slurm_queue import FORMAT, Standing, parse_queue, standings

__all__ = ["NICE_MAX", "SlurmBackend", "nice_for_priority"]

#: SLURM's bound on ``--nice`` (either sign)
NICE_MAX = 2147483645

#: the batch script's name inside the job's directory
#: the handle of an accepted job, written into its directory at once
LAUNCHED_NAME = "launched.json"
SCRIPT_NAME = "job.sbatch"

_PENDING = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
    }
)
_RUNNING = frozenset(
    {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}
)
_FAILED = frozenset(
    {"FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
)
_CANCELLED = frozenset({"CANCELLED", "REVOKED"})

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_JOB_ID = re.compile(r"^[0-9]+$")
# QOS and account names go into #SBATCH lines
_SLURM_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
# SLURM's time limit forms: minutes, m:s, h:m:s, d-h, d-h:m, d-h:m:s; or no limit
_TIME_LIMIT = re.compile(
    r"^(?:\d+(?::\d{1,2}){0,2}|\d+-\d+(?::\d{1,2}){0,2}|UNLIMITED|INFINITE)$", re.IGNORECASE
)
# environment of the server that must not reach jobs (sbatch exports its environment)
_HIDDEN_ENV = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")


def nice_for_priority(
    priority: int, *, base: int = 0, step: int = 100, allow_negative: bool = False
) -> int:
    """SLURM's nice for a priority: larger priority, smaller nice; clamped to what SLURM takes."""
    nice = base - priority * step
    low = -NICE_MAX if allow_negative else 0
    return max(low, min(NICE_MAX, nice))


@dataclass(frozen=True)
class _Row:
    """One job as the poll's ``squeue`` shows it."""

    state: str
    reason: str
    wait_status: int | None
    partition: str


#: how long the nodes' GPUs read from sinfo are kept (s)
_NODES_TTL_S = 60.0


def _gres_counts(line: str, name: str) -> dict[str, int]:
    """One node's GPUs from sinfo's ``%G`` (``gpu:4``, ``gpu:a100:4(S:0-1),shard:8``): count
    by type ("" untyped), for the GRES ``name``."""
    counts: dict[str, int] = {}
    for item in re.split(r",(?![^(]*\))", line.strip()):
        parts = item.split("(", 1)[0].split(":")
        if parts[0] != name or len(parts) < 2 or not parts[-1].isdigit():
            continue
        kind = parts[1].lower() if len(parts) == 3 else ""
        counts[kind] = counts.get(kind, 0) + int(parts[-1])
    return counts


def _names(option: str, mapping: Mapping[str, str] | None) -> dict[str, str]:
    """A mapping of ours -> SLURM names, each checked to fit an ``#SBATCH`` line."""
    found: dict[str, str] = {}
    for key, value in (mapping or {}).items():
        if not isinstance(value, str) or not _SLURM_NAME.match(value):
            raise ValueError(
                f"{option}[{key!r}]: {value!r} is not a SLURM name (letters, digits, '.', '_', '-')"
            )
        found[str(key)] = value
    return found


def _exit_code(wait_status: int) -> int:
    """A wait status as squeue's exit_code shows it -> exit code, or -N for signal N."""
    signal = wait_status & 0x7F
    if signal:
        return -signal
    return (wait_status >> 8) & 0xFF


def _slurm_reason(reason: str) -> str | None:
    reason = reason.strip()
    return None if reason in ("", "None", "(null)") else reason


def _quote_path(path: str, what: str) -> str:
    """A path for an ``#SBATCH`` line (double quotes; sbatch has no escapes inside them)."""
    if any(c in path for c in '"\n\r\\'):
        raise BackendError(f"the {what} {path!r} holds a character SLURM scripts cannot carry")
    return f'"{path}"'


def _comment(launch: JobLaunch) -> str:
    """What tells this launch's SLURM job apart: the job and its (unique) directory's name."""
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(os.path.abspath(launch.workdir)))
    return f"dlinfra-job-{launch.job_id}-{tag}"[:200]


class SlurmBackend(JobBackend):
    name = "slurm"
    places_gpus = True
    # srun starts the ranks' launcher on each node of the batch job
    rank_nodes = None
    # roles run on one node (the job's launcher starts them in order, in the allocation)
    runs_roles = True

    def __init__(
        self,
        *,
        partition: str | None = None,
        account: str | None = None,
        qos_by_priority: Mapping[int, str] | None = None,
        qos_by_class: Mapping[str, str] | None = None,
        account_by_group: Mapping[str, str] | None = None,
        time_limit: str | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        sbatch: str = "sbatch",
        squeue: str = "squeue",
        scontrol: str = "scontrol",
        scancel: str = "scancel",
        sinfo: str = "sinfo",
        gres_name: str = "gpu",
        gres_types: Mapping[str, str] | None = None,
        nice_base: int = 0,
        nice_step: int = 100,
        allow_negative_nice: bool | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.partition = partition or None
        self.account = account or None
        self.qos_by_priority = dict(qos_by_priority or {})
        self.qos_by_class = _names("qos_by_class", qos_by_class)
        self.account_by_group = _names("account_by_group", account_by_group)
        if time_limit is not None and not _TIME_LIMIT.match(str(time_limit).strip()):
            raise ValueError(
                f"time_limit: {time_limit!r} is not a SLURM time limit (minutes, "
                "hours:minutes:seconds, days-hours:minutes:seconds, or UNLIMITED)"
            )
        self.time_limit = str(time_limit).strip() if time_limit is not None else None
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.commands = {
            "sbatch": sbatch,
            "squeue": squeue,
            "scontrol": scontrol,
            "scancel": scancel,
            "sinfo": sinfo,
        }
        self.gres_name = gres_name
        self.gres_types = {k.lower(): v.lower() for k, v in (gres_types or {}).items()}
        self.nice_base = nice_base
        self.nice_step = nice_step
        self.allow_negative_nice = (
            os.geteuid() == 0 if allow_negative_nice is None else allow_negative_nice
        )
        self.timeout = timeout
        self._cluster: str | None = None
        #: (when read, each node's GPUs by GRES type: "" for untyped)
        self._nodes_read: tuple[float, list[dict[str, int]]] | None = None

    # --- running the tools ----------------------------------------------------------------

    def _environ(self) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if k not in _HIDDEN_ENV}
        environ.update(self.env)
        return environ

    def _which(self, tool: str) -> str | None:
        command = self.commands[tool]
        if os.sep in command:
            return command if os.access(command, os.X_OK) and os.path.isfile(command) else None
        return shutil.which(command, path=self._environ().get("PATH"))

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a SLURM tool; BackendError when it is missing or does not answer in time."""
        path = self._which(tool)
        if path is None:
            raise BackendError(
                f"SLURM's `{tool}` was not found ({self.commands[tool]!r}); "
                "is SLURM installed on this machine?"
            )
        try:
            return subprocess.run(
                [path, *args],
                capture_output=True,
                text=True,
                env=self._environ(),
                timeout=self.timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise BackendError(f"`{tool}` did not answer within {self.timeout:g} s") from None
        except OSError as err:
            raise BackendError(f"could not run `{tool}`: {err}") from None

    @staticmethod
    def _failure(tool: str, proc: subprocess.CompletedProcess[str]) -> BackendError:
        message = (proc.stderr.strip() or proc.stdout.strip() or "no message").replace("\n", "; ")
        return BackendError(f"`{tool}` failed (exit status {proc.returncode}): {message}")

    def _cluster_name(self) -> str | None:
        if self._cluster is None:
            with contextlib.suppress(BackendError):
                proc = self._run("scontrol", "show", "config")
                match = re.search(r"^ClusterName\s*=\s*(\S+)", proc.stdout, re.MULTILINE)
                if proc.returncode == 0 and match:
                    self._cluster = match.group(1)
        return self._cluster

    # --- submit ---------------------------------------------------------------------------

    def _nice(self, priority: int) -> int:
        return nice_for_priority(
            priority,
            base=self.nice_base,
            step=self.nice_step,
            allow_negative=self.allow_negative_nice,
        )

    def _qos(self, launch: JobLaunch) -> str | None:
        if launch.priority_class is not None and launch.priority_class in self.qos_by_class:
            return self.qos_by_class[launch.priority_class]
        eligible = [t for t in self.qos_by_priority if t <= launch.priority]
        return self.qos_by_priority[max(eligible)] if eligible else None

    def _account(self, launch: JobLaunch) -> str | None:
        for group in launch.groups:
            if group in self.account_by_group:
                return self.account_by_group[group]
        return self.account

    def _gres(self, launch: JobLaunch) -> str | None:
        """The GRES of each node (a distributed job's GPUs are split evenly over its nodes)."""
        count = launch.gpus // launch.nodes if launch.nodes else launch.gpus
        if count <= 0:
            return None
        if launch.model and self.gres_types:
            gres_type = self.gres_types.get(launch.model.lower())
            if gres_type is None:
                known = ", ".join(sorted(self.gres_types)) or "none"
                raise BackendError(
                    f"no SLURM GRES type is configured for GPU model {launch.model!r} "
                    f"(known: {known})"
                )
            return f"{self.gres_name}:{gres_type}:{count}"
        return f"{self.gres_name}:{count}"

    def _parents(self, after: Sequence[JobHandle]) -> list[str]:
        """The SLURM ids to depend on; parents SLURM forgot must have succeeded (status.json)."""
        for parent in after:
            if parent.backend != self.name or not _JOB_ID.match(parent.ref):
                raise BackendError(
                    f"a SLURM job can only wait for SLURM jobs, not {parent.backend}:{parent.ref}"
                )
        if not after:
            return []
        known = self._squeue([p.ref for p in after])
        refs: list[str] = []
        for parent in after:
            if parent.ref in known:
                refs.append(parent.ref)
                continue
            status = self._from_status_file(parent)
            if status.state is not BackendState.SUCCEEDED:
                how = status.state.value + (f" ({status.reason})" if status.reason else "")
                raise BackendError(f"parent SLURM job {parent.ref} did not succeed: {how}")
        return sorted(set(refs), key=int)

    def script(self, launch: JobLaunch, parents: Sequence[str] = ()) -> str:
        """The batch script for a launch (``parents``: the SLURM ids it waits for)."""
        if not launch.argv:
            raise BackendError("the job has no command to run")
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", launch.name).strip("_")[:100]
        user = re.sub(r"\s+", " ", launch.user)
        lines = [
            "#!/bin/bash",
            f"# jupyter-dlinfra job {launch.job_id} of {user}, written by the slurm backend",
            f"#SBATCH --job-name={name or f'dlinfra-{launch.job_id}'}",
            f"#SBATCH --chdir={_quote_path(os.path.abspath(launch.workdir), 'job directory')}",
            # finds the job again if the server dies between sbatch and recording its id
            f"#SBATCH --comment={_comment(launch)}",
        ]
        if launch.log_path:
            # sbatch expands %j, %u... in file names: a literal % is written %%
            log_path = os.path.abspath(launch.log_path).replace("%", "%%")
            log = _quote_path(log_path, "log path")
            lines += [f"#SBATCH --output={log}", "#SBATCH --open-mode=append"]
        if launch.nodes:
            # one task per node: the node's launcher starts its ranks (one per GPU)
            lines += [f"#SBATCH --nodes={launch.nodes}", "#SBATCH --ntasks-per-node=1"]
        gres = self._gres(launch)
        if gres:
            lines.append(f"#SBATCH --gres={gres}")
        if parents:
            lines.append(f"#SBATCH --dependency=afterok:{':'.join(parents)}")
            lines.append("#SBATCH --kill-on-invalid-dep=yes")
        nice = self._nice(launch.priority)
        if nice:
            lines.append(f"#SBATCH --nice={nice}")
        for option, value in (
            ("partition", self.partition),
            ("account", self._account(launch)),
            ("qos", self._qos(launch)),
            ("time", self.time_limit),
        ):
            if value:
                lines.append(f"#SBATCH --{option}={value}")
        for key, value in launch.env.items():
            if not _ENV_NAME.match(key):
                raise BackendError(f"invalid environment variable name {key!r}")
            lines.append(f"export {key}={shlex.quote(value)}")
        command = " ".join(shlex.quote(str(arg)) for arg in launch.argv)
        if not launch.nodes:
            lines.append(f"exec {command}")
            return "\n".join(lines) + "\n"
        lines += [
            # a requeued job starts afresh: nothing of an earlier attempt speaks for this one
            "rm -f rendezvous.json status.json nodes/*/status.json",
            # one launcher per node; when one fails, srun stops the others'
            f"srun --kill-on-bad-exit=1 --ntasks-per-node=1 {command} --slurm",
            # the job's status from the nodes' (its exit code is the job's)
            f"exec {command} --gather",
        ]
        return "\n".join(lines) + "\n"

    def submit(self, launch: JobLaunch) -> JobHandle:
        parents = self._parents(launch.after)
        text = self.script(launch, parents)
        workdir = Path(os.path.abspath(launch.workdir))
        script = workdir / SCRIPT_NAME
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            script.write_text(text)
            script.chmod(0o755)
        except OSError as err:
            raise BackendError(f"could not write the batch script {script}: {err}") from None
        proc = self._run("sbatch", "--parsable", *self.extra_args, str(script))
        if proc.returncode != 0:
            raise self._failure("sbatch", proc)
        out = proc.stdout.strip().splitlines()
        job_id, _, cluster = (out[-1] if out else "").partition(";")
        if not _JOB_ID.match(job_id):
            raise BackendError(f"`sbatch` gave no job id: {proc.stdout.strip()!r}")
        handle = JobHandle(
            backend=self.name,
            ref=job_id,
            detail={
                "script": str(script),
                "workdir": str(workdir),
                "log": launch.log_path or None,
                "cluster": cluster or self._cluster_name(),
            },
        )
        with contextlib.suppress(OSError):
            (workdir / LAUNCHED_NAME).write_text(json.dumps(handle.to_json()), encoding="utf-8")
        return handle

    def recover(self, launch: JobLaunch) -> JobHandle | None:
        """A job sbatch accepted for this launch: from ``launched.json``, else by its comment."""
        workdir = Path(os.path.abspath(launch.workdir))
        try:
            data = json.loads((workdir / LAUNCHED_NAME).read_text(encoding="utf-8"))
            return JobHandle.from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        proc = self._run("squeue", "--noheader", "--states=all", "--format=%i|%k")
        if proc.returncode != 0:
            raise self._failure("squeue", proc)
        wanted = _comment(launch)
        for line in proc.stdout.splitlines():
            job_id, _, comment = line.strip().partition("|")
            if comment.strip() == wanted and _JOB_ID.match(job_id):
                return JobHandle(
                    backend=self.name,
                    ref=job_id,
                    detail={
                        "script": str(workdir / SCRIPT_NAME),
                        "workdir": str(workdir),
                        "log": launch.log_path or None,
                        "cluster": self._cluster_name(),
                    },
                )
        return None

    # --- poll -----------------------------------------------------------------------------

    def _squeue(self, refs: Sequence[str]) -> dict[str, _Row]:
        """What SLURM says of the jobs it still knows, by id."""
        ids = sorted({r for r in refs if _JOB_ID.match(r)}, key=int)
        if not ids:
            return {}
        proc = self._run(
            "squeue",
            "--noheader",
            "--states=all",
            "--jobs=" + ",".join(ids),
            "--Format=JobID:|,State:|,Reason:|,exit_code:|,Partition:|",
        )
        if proc.returncode != 0:
            # one id that SLURM forgot: squeue errs; with several it just leaves them out
            if "invalid job id" in proc.stderr.lower():
                return {}
            raise self._failure("squeue", proc)
        rows: dict[str, _Row] = {}
        for line in proc.stdout.splitlines():
            fields = [f.strip() for f in line.split("|")]
            if len(fields) < 5 or fields[0] not in ids:
                continue
            try:
                wait_status: int | None = int(fields[3])
            except ValueError:
                wait_status = None
            rows[fields[0]] = _Row(fields[1].upper(), fields[2], wait_status, fields[4])
        return rows

    def _standings(self, rows: Mapping[str, _Row]) -> dict[str, Standing]:
        """Where the pending jobs of ``rows`` stand in their partitions' queues; {} when SLURM
        does not say (the jobs' states are known without it)."""
        pending = {ref for ref, row in rows.items() if row.state.split()[0] in _PENDING}
        if not pending:
            return {}
        partitions = sorted({p for ref in pending for p in rows[ref].partition.split(",") if p})
        args = ["--noheader", "--states=PENDING", "--Format=" + FORMAT]
        if partitions:
            args.append("--partition=" + ",".join(partitions))
        try:
            proc = self._run("squeue", *args)
        except BackendError:
            return {}
        if proc.returncode != 0:
            return {}
        return standings(parse_queue(proc.stdout), pending)

    @staticmethod
    def _status(state: str, reason: str, wait_status: int | None) -> BackendStatus:
        why = _slurm_reason(reason)
        # squeue may append flags, e.g. "CANCELLED by 0" in other formats
        state = state.split()[0] if state else "UNKNOWN"
        if state in _PENDING:
            if state != "PENDING":
                why = state.lower() + (f": {why}" if why else "")
            return BackendStatus(state=BackendState.PENDING, reason=why)
        if state in _RUNNING:
            if state not in ("RUNNING", "COMPLETING"):
                why = state.lower() + (f": {why}" if why else "")
            return BackendStatus(state=BackendState.RUNNING, reason=why)
        code = _exit_code(wait_status) if wait_status is not None else None
        if state == "COMPLETED":
            return BackendStatus(state=BackendState.SUCCEEDED, reason=why, exit_code=code)
        how = f"killed by signal {-code}" if code is not None and code < 0 else None
        if state in _CANCELLED:
            # a job cancelled before it ran has no exit code worth showing
            if wait_status == 0:
                code = None
            parts = [p for p in (why, how) if p]
            return BackendStatus(
                state=BackendState.CANCELLED,
                reason="; ".join(parts) or "cancelled",
                exit_code=code,
            )
        if state in _FAILED:
            parts = [state.lower().replace("_", " ")] if state != "FAILED" else []
            if why:
                parts.append(why)
            if how:
                parts.append(how)
            elif code is not None:
                parts.append(f"exit code {code}")
            return BackendStatus(state=BackendState.FAILED, reason=", ".join(parts), exit_code=code)
        return BackendStatus(
            state=BackendState.FAILED, reason=f"unknown SLURM state {state}", exit_code=code
        )

    @staticmethod
    def _from_status_file(handle: JobHandle) -> BackendStatus:
        """How the in-job runner says the job ended, for a job SLURM forgot; else LOST."""
        return status_from_file(handle.detail.get("workdir"), "SLURM does not know the job")

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, BackendStatus]:
        rows = self._squeue([h.ref for h in handles])
        standing = self._standings(rows)
        statuses: dict[str, BackendStatus] = {}
        for handle in handles:
            row = rows.get(handle.ref)
            if row is None:
                statuses[handle.ref] = self._from_status_file(handle)
                continue
            status = self._status(row.state, row.reason, row.wait_status)
            where = standing.get(handle.ref)
            # a job waiting for a parent or held is not in the race: its reason says why
            competing = where is not None and where.position is not None
            if where is not None and competing and status.state is BackendState.PENDING:
                status = replace(
                    status,
                    position=where.position,
                    queue_length=where.length,
                    estimated_start=where.estimated_start,
                )
            statuses[handle.ref] = status
        return statuses

    # --- cancel, describe -----------------------------------------------------------------

    def cancel(self, handle: JobHandle) -> None:
        if not _JOB_ID.match(handle.ref):
            raise BackendError(f"not a SLURM job id: {handle.ref!r}")
        proc = self._run("scancel", handle.ref)
        if proc.returncode != 0 and "invalid job id" not in proc.stderr.lower():
            raise self._failure("scancel", proc)

    def node_gpus(self, model: str | None) -> int | None:
        """The most GPUs of the GRES ``gres_name`` one node of the partition has (``sinfo``,
        read at most once a minute), of ``model``'s GRES type when ``gres_types`` maps it;
        None when SLURM does not say."""
        now = time.monotonic()
        if self._nodes_read is None or now - self._nodes_read[0] > _NODES_TTL_S:
            args = ["--noheader", "--Node", "--format=%G"]
            if self.partition:
                args.append(f"--partition={self.partition}")
            try:
                proc = self._run("sinfo", *args)
            except BackendError:
                return None
            if proc.returncode != 0:
                return None
            found = [_gres_counts(line, self.gres_name) for line in proc.stdout.splitlines()]
            self._nodes_read = (now, found)
        wanted = self.gres_types.get(model.lower()) if model and self.gres_types else None
        counts = [
            (node.get(wanted, 0) if wanted is not None else sum(node.values()))
            for node in self._nodes_read[1]
        ]
        return max(counts, default=0) or None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "places_gpus": self.places_gpus,
            "available": False,
            "partition": self.partition,
        }
        missing = [tool for tool in ("sbatch", "squeue", "scancel") if self._which(tool) is None]
        if missing:
            info["reason"] = (
                "SLURM's "
                + ", ".join(f"`{tool}` ({self.commands[tool]!r})" for tool in missing)
                + (" was" if len(missing) == 1 else " were")
                + " not found"
            )
            return info
        try:
            proc = self._run("scontrol", "ping")
        except BackendError as err:
            info["reason"] = str(err)
            return info
        if proc.returncode != 0 or "is UP" not in proc.stdout:
            answer = (proc.stdout.strip() or proc.stderr.strip()).replace("\n", "; ")
            info["reason"] = f"slurmctld does not answer: {answer or 'no answer'}"
            return info
        info["available"] = True
        info["cluster"] = self._cluster_name()
        return info
