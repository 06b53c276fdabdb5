"""A program whose main thread is stuck in one long C call (as in an XLA compile) when the
signal comes, with a temporary file registered for a hard exit (tests/test_faults.py)."""

from __future__ import annotations

from swifti2v_jax import startup  # noqa: F401

# isort: split
import os
import sys
import zlib
from pathlib import Path

from swifti2v_jax import cli


def main(argv) -> int:
    partial = Path(argv[0])
    partial.write_text("half-written")
    cli.on_hard_exit(lambda: partial.unlink(missing_ok=True))
    data = os.urandom(1 << 20) * 512  # 512 MiB: zlib level 9 takes many seconds, in C
    print("compressing", flush=True)
    zlib.compress(data, 9)
    print("finished", flush=True)
    partial.unlink()
    return 0


if __name__ == "__main__":
    cli.run(main, prog="stuck_check.py")
    sys.exit(0)
