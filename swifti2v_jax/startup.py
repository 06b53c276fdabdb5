"""Imported first by the entry points (sample.py, train.py, `python -m conversion`, data
preparation): until `cli.run` installs its handlers, SIGINT and SIGTERM end the process at once
with one line and status 128 + signal number. Start-up (imports of JAX and the models) has
nothing to clean up, and a KeyboardInterrupt raised there would land anywhere, e.g. inside
JAX's gc callback, which prints and drops it (docs/faults.md, "Signals").

It also keeps the TPU runtime quiet where there is no TPU: with libtpu installed (the `tpu`
extra) and no TPU chip on the PCI bus, JAX would still try the TPU backend and libtpu prints
errors ("unexpected worker hostname", "No jellyfish device found"). `choose_platforms` sets
JAX_PLATFORMS to the backends that are there, before JAX starts, unless JAX_PLATFORMS is set.

Importing this module is its only use: `from swifti2v_jax import startup  # noqa: F401`.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import signal
import sys
import threading

_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips (JAX's own check reads the same files)


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


def _tpu_visible() -> bool:
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if open(vendor).read().strip() == _GOOGLE_PCI_VENDOR:
                return True
        except OSError:
            continue
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def choose_platforms() -> str | None:
    """Sets JAX_PLATFORMS without the TPU when libtpu is installed but no TPU is attached;
    -> the value set, or None (left to JAX: JAX_PLATFORMS given, no libtpu, or a TPU)."""
    if os.environ.get("JAX_PLATFORMS") or not sys.platform.startswith("linux"):
        return None
    if importlib.util.find_spec("libtpu") is None or _tpu_visible():
        return None
    cuda = any(importlib.util.find_spec(f"jax_cuda{v}_plugin") for v in (12, 13))
    gpu = cuda and bool(glob.glob("/dev/nvidia[0-9]*"))
    os.environ["JAX_PLATFORMS"] = "cuda,cpu" if gpu else "cpu"
    return os.environ["JAX_PLATFORMS"]


choose_platforms()

if threading.current_thread() is threading.main_thread():
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, _exit_at_once)
