"""The command of a Kubernetes job's container: ``python -c <this file's source> LOG ARGS...``.

It starts ``[sys.executable, *ARGS]``, copies the command's output, as it arrives, to both its own
stdout (the pod log) and LOG (appended), forwards SIGTERM/SIGINT/SIGHUP to the command and exits
with the command's exit code (``128 + N`` for a death by signal N, like a shell); 125 when LOG
cannot be opened, 127 when the command cannot be started. Why a Python wrapper and not a shell
pipe: see "Logs" in :mod:`jupyter_dlinfra.backends.kubernetes_job`.

The pod receives the source text, not an import (the image's jupyter-dlinfra may be another
version), so this module uses the standard library only and does its work only when run as
``__main__``; importing it, as the backend does to read its source, runs nothing.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
from types import FrameType


def main() -> None:
    # the job runs with the wrapper's own Python, the image's
    log_path, argv = sys.argv[1], [sys.executable, *sys.argv[2:]]
    try:
        log = open(log_path, "ab")  # noqa: SIM115 - held open while the command runs
    except OSError as err:
        sys.stderr.write(f"dlinfra: cannot open the job log {log_path}: {err}\n")
        sys.exit(125)
    try:
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    except OSError as err:
        msg = f"dlinfra: cannot start {argv[0]}: {err}\n"
        sys.stderr.write(msg)
        log.write(msg.encode())
        sys.exit(127)

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):
            child.send_signal(signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    output = child.stdout
    assert output is not None  # stdout=PIPE

    def copy() -> None:
        out = sys.stdout.buffer
        while True:
            chunk = os.read(output.fileno(), 65536)
            if not chunk:
                break
            for f in (out, log):
                with contextlib.suppress(OSError, ValueError):
                    f.write(chunk)
                    f.flush()

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    code = child.wait()
    # a process the command left behind may hold the pipe open: do not wait for it for long
    reader.join(10)
    log.close()
    sys.exit(128 - code if code < 0 else code)


if __name__ == "__main__":
    main()
