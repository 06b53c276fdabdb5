"""Imported first by the entry points (sample.py, train.py, `python -m conversion`, data
preparation): until `cli.run` installs its handlers, SIGINT and SIGTERM end the process at once
with one line and status 128 + signal number. Start-up (imports of JAX and the models) has
nothing to clean up, and a KeyboardInterrupt raised there would land anywhere, e.g. inside
JAX's gc callback, which prints and drops it (docs/faults.md, "Signals").

Importing this module is its only use: `from swifti2v_jax import startup  # noqa: F401`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def program_name() -> str:
    """`sample.py`, or `python -m conversion` for a module run with -m."""
    path = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    name = os.path.basename(path)
    if name == "__main__.py":
        return f"python -m {os.path.basename(os.path.dirname(path))}"
    return name


def _exit_at_once(signum, frame) -> None:
    del frame
    os.write(2, f"{program_name()}: interrupted by {signal.Signals(signum).name}\n".encode())
    os._exit(128 + signum)


if threading.current_thread() is threading.main_thread():
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, _exit_at_once)
