"""One error path for every entry point (sample.py, train.py, `python -m conversion`, data
prepare/rollout, benchmarks).

    if __name__ == "__main__":
        cli.run(main, prog="sample.py", absl_flags=True)

- A user-fixable problem (a `UserError`, or one of the entry point's `user_errors`) prints one
  line `PROG: error: ...` on stderr and exits 1; bad flags and config files (unknown
  `--config.x`, missing file, bad preset) exit 2, before any model work.
- Anything else is a bug and keeps its traceback.
- SIGTERM and SIGINT raise `Interrupted` (a KeyboardInterrupt) in the main thread, so every
  `finally`/`except BaseException` cleanup runs (the mp4 writer deletes its temporary file);
  then one line and exit status 128 + signal number (without interpreter teardown, see
  `_exit_now`). A second signal during cleanup is ignored.
- Python runs signal handlers only between bytecodes of the main thread: one stuck in a long
  C call (an XLA compile) would not see the signal for minutes. A watchdog thread woken by
  the signal (`signal.set_wakeup_fd`) ends such a process after `HARD_EXIT_SECONDS`: it runs
  the callbacks registered with `on_hard_exit` (temporary outputs), prints the same line and
  exits with the same status. Before `run` (imports), swifti2v_jax/startup.py exits at once.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

EXIT_USER = 1  # a user-fixable problem found while running
EXIT_USAGE = 2  # bad command line or config file (argparse's status)
HARD_EXIT_SECONDS = 1.5  # a signal the main thread has not acted on by then: exit anyway
_HELP = ("-h", "--help", "--helpshort", "--helpfull", "-?")


class UserError(Exception):
    """Ends the run with a one-line message (no traceback)."""

    status = EXIT_USER


class UsageError(UserError):
    """A bad command line (e.g. a stray positional argument): exit status 2, as argparse."""

    status = EXIT_USAGE


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived; raised in the main thread by `install_signal_handlers`."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


_deferring = 0  # > 0 inside `signals_deferred()`
_pending: int | None = None  # a signal that arrived meanwhile
_acted_on = threading.Event()  # the main thread raised `Interrupted`: its cleanup is running
_emergency: dict[object, Callable[[], None]] = {}
_prog = "python"
_watching = False


def _on_signal(signum, frame):
    global _pending
    if _deferring:
        _pending = signum
        return
    if _in_finaliser(frame):  # an exception raised there is printed and dropped: retry soon
        threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
        return
    for s in (signal.SIGTERM, signal.SIGINT):  # cleanup must not be interrupted again
        signal.signal(s, signal.SIG_IGN)
    _acted_on.set()
    raise Interrupted(signum)


def on_hard_exit(callback: Callable[[], None]) -> Callable[[], None]:
    """Registers `callback` (e.g. deleting a temporary file) to run before a hard exit on a
    signal (see above); -> a function that unregisters it. The normal path cleans up itself."""
    key = object()
    _emergency[key] = callback
    return lambda: _emergency.pop(key, None)


def _watch_signals(read_fd: int) -> None:
    """Wakes when a signal arrives, even while the main thread is stuck in C code."""
    while True:
        data = os.read(read_fd, 1)
        if not data:
            return
        signum = data[0]
        if signum not in (signal.SIGINT, signal.SIGTERM):
            continue
        if signal.getsignal(signum) not in (_on_signal, signal.SIG_IGN):
            continue  # handled elsewhere (training's SIGTERM saves a checkpoint, slowly)
        if _acted_on.wait(HARD_EXIT_SECONDS) or _deferring:
            continue  # the main thread got it; its cleanup may take its time
        for callback in list(_emergency.values()):
            with contextlib.suppress(Exception):
                callback()
        print(f"{_prog}: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        _exit_now(128 + signum)


def _in_finaliser(frame) -> bool:
    """Whether `frame` runs inside a gc callback (JAX has one) or a __del__ method."""
    callbacks = {getattr(c, "__code__", None) for c in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """A block a signal must not cut in half (starting ffmpeg: a child started but never
    waited for outlives us and re-creates its output file); the signal acts when it ends."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending is not None:
            signum, _pending = _pending, None
            _on_signal(signum, None)


def install_signal_handlers(prog: str | None = None) -> None:
    global _prog, _watching
    _prog = prog or _prog
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if not _watching:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(target=_watch_signals, args=(read_fd,), daemon=True).start()
        _watching = True


def one_line(error: BaseException) -> str:
    """The error's message on one line (whitespace collapsed), or its type's name."""
    return " ".join(str(error).split()) or type(error).__name__


def fail(prog: str, message: str, status: int = EXIT_USER):
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def config_error_message(error: BaseException, argv: list[str] | None = None) -> str:
    """One line for an absl flag or ml_collections config error (its traceback dropped)."""
    from absl import flags

    argv = sys.argv if argv is None else argv
    if isinstance(error, AttributeError | KeyError):  # an unknown --config.x field
        key = str(error).strip("\"' ")
        names = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        named = [n for n in names if key in n.split(".")[1:]] or names
        return f"unknown config field {key!r} in {', '.join(named) or 'the overrides'}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if isinstance(error, flags.Error) and len(lines) > 1:  # "flag --config=X: ... <traceback>"
        return f"{lines[0].split(': ')[0]}: {re.sub(r'^[A-Za-z_.]+Error: ', '', lines[-1])}"
    if isinstance(error, OSError) and "config file" in lines[0]:
        return f"cannot load the config file: {lines[-1]}"
    return " ".join(lines)


# Errors an absl/ml_collections config flag raises for a user's mistake.
_CONFIG_ERRORS = (AttributeError, KeyError, OSError, SyntaxError, TypeError, ValueError)


@contextlib.contextmanager
def config_errors(prog: str) -> Iterator[None]:
    """Config-flag definition and parsing: user mistakes -> one line and exit 2.

    ml_collections applies `--config.x=...` overrides when the flag is defined (module import
    time, if the flag has a default file), so wrap the DEFINE_config_file call too."""
    from absl import flags

    try:
        yield
    except (flags.Error, *_CONFIG_ERRORS) as e:
        fail(prog, config_error_message(e), EXIT_USAGE)


def config_value(holder, prog: str):
    """`holder.value` of a config flag, with a missing or broken file as one line (ml_collections
    defers that error to the first use of the config)."""
    with config_errors(prog):
        config = holder.value
        if config is not None:
            config.keys()  # a config that failed to load raises here
    return config


def _absl_flags_parser(prog: str) -> Callable[[list[str]], list[str]]:
    def parse(argv: list[str]) -> list[str]:
        from absl import flags

        asked_help = any(a in _HELP for a in argv[1:])
        with config_errors(prog):
            try:
                return flags.FLAGS(argv)
            except SystemExit as e:  # absl's --help exits 1 after printing the help
                raise SystemExit(0 if asked_help else e.code) from None

    return parse


def run(
    main: Callable,
    *,
    prog: str,
    user_errors: tuple[type[BaseException], ...] = (),
    absl_flags: bool = False,
) -> None:
    """Runs `main` as a program and exits: `main(argv)` after absl flag parsing (absl_flags),
    else `main(sys.argv[1:])`; its return value is the exit status."""
    install_signal_handlers(prog)
    try:
        if absl_flags:
            from absl import app

            app.run(main, flags_parser=_absl_flags_parser(prog))  # exits with main's status
        else:
            sys.exit(main(sys.argv[1:]))
    except (UserError, *user_errors) as e:
        _exit_if_peer_died(prog, e)
        fail(prog, one_line(e), getattr(e, "status", EXIT_USER))
    except Exception as e:  # a bug keeps its traceback, unless a peer process died
        _exit_if_peer_died(prog, e)
        raise
    except KeyboardInterrupt as e:  # cleanup has run on the way up
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        print(f"{prog}: interrupted by {name}", file=sys.stderr, flush=True)
        _exit_now(128 + signum)


def _exit_if_peer_died(prog: str, error: BaseException) -> None:
    """A collective failed because another process of the run died: one line, and no
    teardown (JAX's distributed shutdown would wait for the dead peer)."""
    from swifti2v_jax import launch

    message = launch.peer_failure(error)
    if message is not None:
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        _exit_now(EXIT_USER)


def _exit_now(status: int) -> None:
    """Exits without interpreter finalisation: JAX's compiler threads may still be running,
    and tearing the interpreter down under them can crash (seen: SIGSEGV after a SIGTERM
    during compilation). Cleanup has already run on the way up."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


@contextlib.contextmanager
def new_outputs(directory: Path, keep: Callable[[], bool]) -> Iterator[None]:
    """On any failure or signal, removes what the block created in `directory` (the directory
    itself if it is new) unless `keep()` (e.g. a checkpoint was saved) says it is worth keeping."""
    directory = Path(directory)
    existed = directory.is_dir()
    before = set(directory.iterdir()) if existed else set()

    def remove_new() -> None:
        if keep():
            return
        if not existed:
            shutil.rmtree(directory, ignore_errors=True)
        elif directory.is_dir():
            for path in set(directory.iterdir()) - before:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    forget = on_hard_exit(remove_new)  # a signal while stuck in a compile: same cleanup
    try:
        yield
    except BaseException:
        remove_new()
        raise
    finally:
        forget()
