"""Temporary outputs that name their process, so a later run can remove a killed run's.

A temporary file or folder (the hidden `.NAME.<tag>.XXXX.partial.mp4` of the mp4 writer, a
conversion's `.OUT.tmp-<tag>-XXXX/`, a data preparation's `.prepare-<tag>-XXXX/`) carries
`tag()`: the pid and the process' start time (so a reused pid is not taken for the same
process). `remove_stale` deletes the ones whose process is gone and says so in one line; the
files of a run still going (another process writing the same output) are left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

_TAG = re.compile(r"(?<![0-9])p(\d+)s(\d+)(?![0-9])")


def _start_time(pid: int) -> int | None:
    """Clock ticks since boot when `pid` started (Linux), 0 where unknown, None: no process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None  # Linux: no such process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])  # a zombie is gone


def tag() -> str:
    """`p<pid>s<start time>` of this process."""
    pid = os.getpid()
    return f"p{pid}s{_start_time(pid) or 0}"


def temp_name(path: str | os.PathLike) -> str:
    """`.NAME.tmp-<tag>`: this process' temporary entry beside `path` (callers may add a
    suffix); `temp_pattern(path)` is the glob that finds any process' such entries."""
    return f".{Path(path).name}.tmp-{tag()}"


def temp_pattern(path: str | os.PathLike) -> str:
    """The glob matching every `temp_name(path)` entry, for `remove_stale`."""
    return f".{Path(path).name}.tmp-*"


def is_stale(name: str) -> bool:
    """Whether the process named in `name` (by `tag()`) is gone; untagged names: False."""
    match = _TAG.search(name)
    if match is None:
        return False
    pid, start = int(match.group(1)), int(match.group(2))
    now = _start_time(pid)
    return now is None or (now != 0 and start != 0 and now != start)


def remove_stale(
    directory: str | os.PathLike,
    pattern: str,
    what: str,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Deletes the entries of `directory` matching `pattern` (a glob) left by processes that
    are gone; one line through `log` (default: stderr) if any. -> what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted(directory.glob(pattern)):
        if not is_stale(path.name):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        names = ", ".join(p.name for p in removed[:3]) + (" ..." if len(removed) > 3 else "")
        line = f"removed {len(removed)} stale {what} left by a killed run in {directory}: {names}"
        (log or (lambda m: print(m, file=sys.stderr, flush=True)))(line)
    return removed
