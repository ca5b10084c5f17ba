"""The ``%gpu`` line grammar: what the magic runs, and what the job converter reads from a notebook.

Standard library only, so that both the kernel and the job converter can read a ``%gpu`` line
without loading the other's dependencies.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_PROFILE_S", "USAGE", "Command", "UsageError", "parse_line"]

USAGE = """\
%gpu N [--model NAME] [--class NAME] [--timeout SECONDS] [--no-wait]
                                                        ask for N GPUs (waits in the queue)
%gpu N --nodes K                                        (a job's line) N GPUs as K nodes' ranks
%gpu                                                    show this kernel's GPUs, live
%gpu release                                            give this kernel's GPUs back
%gpu keep                                               keep idle GPUs past a reclaim warning
%gpu park                                               park this kernel's GPU memory in host
                                                        memory and lend the GPUs until the next cell
%gpu profile SECONDS                                    sample this kernel's GPUs, report findings
%%gpu profile                                           (cell magic) profile while the cell runs
%gpu --restart                                          restart the kernel with its GPUs applied"""

MAX_PROFILE_S = 3600.0


class UsageError(Exception):
    pass


@dataclass(frozen=True, kw_only=True)
class Command:
    action: str  # show | request | release | restart | keep | park | profile | help
    count: int = 0
    seconds: float = 0.0
    model: str | None = None
    priority_class: str | None = None
    timeout: float | None = None
    wait: bool = True
    restart: bool = False
    #: a job's ranks: its N GPUs as this many nodes' worth (read when the notebook runs as a
    #: job; the magic in a kernel refuses it); None: one process with N GPUs
    nodes: int | None = None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage and exit the kernel
        raise UsageError(message)


def _parser() -> _Parser:
    p = _Parser(prog="%gpu", add_help=False)
    p.add_argument("what", nargs="?")
    p.add_argument("extra", nargs="*")
    p.add_argument("--model")
    p.add_argument("--class", dest="priority_class")
    p.add_argument("--timeout", type=float)
    p.add_argument("--nodes", type=int)
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--restart", action="store_true")
    p.add_argument("-h", "--help", action="store_true")
    return p


def _profile_command(extra: list[str], cell: str | None) -> Command:
    if cell is not None:
        if extra:
            raise UsageError("%%gpu profile profiles its cell while it runs: give no SECONDS")
        return Command(action="profile")
    if len(extra) != 1:
        raise UsageError("say for how long, e.g. %gpu profile 30 (seconds)")
    try:
        seconds = float(extra[0])
    except ValueError:
        raise UsageError(f"expected a number of seconds, not {extra[0]!r}") from None
    if not 0 < seconds <= MAX_PROFILE_S:
        raise UsageError(f"profile for more than 0 and at most {MAX_PROFILE_S:g} seconds")
    return Command(action="profile", seconds=seconds)


def parse_line(line: str, cell: str | None = None) -> Command:
    try:
        args = _parser().parse_args(shlex.split(line))
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.help:
        return Command(action="help")
    what = args.what
    if cell is not None and what != "profile":
        raise UsageError("only %%gpu profile takes a cell; the other commands are line magics")
    if args.extra and what not in ("release", "keep", "park", "profile"):
        raise UsageError(f"unexpected {' '.join(args.extra)!r}")
    if what is None:
        if (
            args.model
            or args.priority_class
            or args.timeout is not None
            or args.no_wait
            or args.nodes is not None
        ):
            raise UsageError("say how many GPUs, e.g. %gpu 2 --model A100")
        return Command(action="restart" if args.restart else "show")
    if what in ("release", "keep", "park"):
        if args.extra:
            raise UsageError(f"%gpu {what} takes nothing more, not {' '.join(args.extra)!r}")
        return Command(action=what)
    if what == "profile":
        return _profile_command(args.extra, cell)
    try:
        count = int(what)
    except ValueError:
        raise UsageError(f"expected a number of GPUs or 'release', not {what!r}") from None
    if count <= 0:
        raise UsageError(
            f"ask for at least 1 GPU (got {count}); use %gpu release to give GPUs back"
        )
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    if args.nodes is not None and not 0 < args.nodes <= count:
        raise UsageError(f"--nodes must be from 1 to the {count} GPUs asked for, not {args.nodes}")
    return Command(
        action="request",
        count=count,
        model=args.model,
        priority_class=args.priority_class,
        timeout=args.timeout,
        wait=not args.no_wait,
        restart=args.restart,
        nodes=args.nodes,
    )
