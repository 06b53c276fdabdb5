"""Local multi-process JAX runs: one machine playing a multi-host slice (docs/sharding.md).

    python -m swifti2v_jax.launch --processes 2 --devices-per-process 4 -- \
        train.py --config=configs/stage2.py:tiny --workdir /tmp/run

starts `python train.py ...` twice with the environment one host of a cluster would have:

    JAX_COORDINATOR_ADDRESS=localhost:PORT   (read by jax.distributed.initialize)
    SWIFTI2V_NUM_PROCESSES=2, SWIFTI2V_PROCESS_ID=0|1
    XLA_FLAGS=--xla_force_host_platform_device_count=4, JAX_PLATFORMS=cpu

Each child joins with `initialize()` below (train.py and data/prepare.py call it first), so a
real cluster runs the same code: set those three variables per host, or on a Cloud TPU slice
pass `--config.distributed=True` and let JAX find its peers. Children's output lines are
prefixed with `[i]` (Gloo's "Rank N is connected" chatter is dropped unless --verbose);
SIGTERM/SIGINT to the launcher go to every child; if one child fails, the others are killed
after a grace period (they would wait for their peer forever).

Faults (docs/faults.md): a launched child dies with the launcher (Linux parent-death signal,
else a watchdog thread on the launcher's pid), and every process of a run exits when a peer
has been silent for `HEARTBEAT_SECONDS` (the JAX distributed runtime's heartbeat), so nothing
waits forever for a process that is gone.
"""

from __future__ import annotations

import argparse
import ctypes
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

COORDINATOR = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES = "SWIFTI2V_NUM_PROCESSES"
PROCESS_ID = "SWIFTI2V_PROCESS_ID"
LAUNCHER_PID = "SWIFTI2V_LAUNCHER_PID"
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
FAILURE_GRACE_SECONDS = 10.0
SIGNAL_GRACE_SECONDS = 300.0
# Every process beats in the coordinator's key-value store; one whose peer has been silent for
# PEER_TIMEOUT_SECONDS (or that lost the coordinator) stops with one line. JAX's own heartbeat
# (default 100 s) is the backstop: it aborts with a C++ stack dump.
BEAT_SECONDS = 2.0
PEER_TIMEOUT_SECONDS = 12.0
HEARTBEAT_SECONDS = 60
SHUTDOWN_SECONDS = 60
_PR_SET_PDEATHSIG = 1
# A collective that failed because its peer is gone (Gloo on CPU).
_PEER_GONE = re.compile(r"Connection (closed|reset) by peer|Gloo \w+ failed")
_CHATTER = re.compile(r"^\[Gloo\] Rank \d+ is connected to \d+ peer ranks")


def initialize(distributed: bool = False) -> None:
    """Joins the multi-process run this process belongs to, if any; call before any other JAX
    work. Launched (SWIFTI2V_NUM_PROCESSES set): explicit coordinator, count and index.
    `distributed`: auto-detected peers (Cloud TPU, SLURM, Open MPI). Neither: one process."""
    count = os.environ.get(NUM_PROCESSES)
    if not count and not distributed:
        return
    import jax

    # Cross-process collectives on CPU devices (ignored by TPU/GPU backends).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if not count:
        jax.distributed.initialize()
        return
    address, index = os.environ.get(COORDINATOR), os.environ.get(PROCESS_ID)
    if not address or index is None:
        raise ValueError(f"{NUM_PROCESSES} is set: {COORDINATOR} and {PROCESS_ID} must be too")
    die_with_launcher()
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=int(count),
        process_id=int(index),
        **_timeouts(jax.distributed.initialize),
    )
    client = _distributed_client()
    if client is not None:
        threading.Thread(
            target=_watch_peers, args=(client, int(index), int(count)), daemon=True
        ).start()


def _distributed_client():
    """JAX's coordination-service client (private API: None where it moved)."""
    try:
        from jax._src import distributed
    except ImportError:
        return None
    client = getattr(getattr(distributed, "global_state", None), "client", None)
    needed = ("key_value_set", "key_value_try_get")
    return client if all(hasattr(client, name) for name in needed) else None


def _watch_peers(client, index: int, count: int) -> None:
    """Beats every BEAT_SECONDS; exits the process (one line) when a peer's beat stops."""
    key = "swifti2v/alive/{}".format
    beats, seen = 0, {i: (None, time.monotonic()) for i in range(count) if i != index}
    while True:
        try:
            beats += 1
            client.key_value_set(key(index), str(beats), True)
            for peer, (last, since) in seen.items():
                try:
                    value = client.key_value_try_get(key(peer))
                except Exception:  # noqa: BLE001 - not there yet (still starting)
                    value = last
                now = time.monotonic()
                if value != last:
                    seen[peer] = (value, now)
                elif now - since > PEER_TIMEOUT_SECONDS:
                    _peer_lost(f"process {peer} of the run has been silent for {now - since:.0f} s")
        except Exception as e:  # noqa: BLE001 - the coordinator (process 0) is gone
            _peer_lost(f"lost the run's coordinator ({type(e).__name__})")
        time.sleep(BEAT_SECONDS)


def peer_failure(error: BaseException) -> str | None:
    """One line for an error that means a peer process of the run died, else None."""
    text = str(error)
    if not _PEER_GONE.search(text):
        return None
    detail = next((line.strip() for line in text.splitlines() if _PEER_GONE.search(line)), "")
    return f"a peer process died ({detail[:160]}); stopping"


def _peer_lost(what: str) -> None:
    prog = os.path.basename(sys.argv[0]) or "python"
    print(f"{prog}: error: {what}: a peer process died; stopping", file=sys.stderr, flush=True)
    os._exit(1)


def _timeouts(initialize) -> dict:
    """The heartbeat and shutdown timeouts, for the jax versions whose initialize takes them."""
    wanted = {
        "heartbeat_timeout_seconds": HEARTBEAT_SECONDS,
        "shutdown_timeout_seconds": SHUTDOWN_SECONDS,
    }
    accepted = inspect.signature(initialize).parameters
    return {name: value for name, value in wanted.items() if name in accepted}


def die_with_launcher() -> None:
    """A launched child: dies when its launcher does (also a SIGKILL of the launcher)."""
    launcher = os.environ.get(LAUNCHER_PID)
    if not launcher:
        return
    launcher = int(launcher)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        armed = False
    if not armed:
        threading.Thread(target=_watch_parent, args=(launcher,), daemon=True).start()
    if os.getppid() != launcher:  # it died before the signal was armed
        os._exit(128 + signal.SIGKILL)


def _watch_parent(launcher: int) -> None:
    while os.getppid() == launcher:
        time.sleep(1.0)
    os._exit(128 + signal.SIGKILL)


def barrier(name: str) -> None:
    """Returns once every process got here (at once with one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def child_env(index: int, processes: int, port: int, devices: int, base=None) -> dict:
    env = dict(os.environ if base is None else base)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    env.update(
        {
            COORDINATOR: f"localhost:{port}",
            NUM_PROCESSES: str(processes),
            PROCESS_ID: str(index),
            LAUNCHER_PID: str(os.getpid()),
            "XLA_FLAGS": " ".join([*flags, f"{DEVICE_COUNT_FLAG}={devices}"]),
        }
    )
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def _forward(stream, out, prefix: str, verbose: bool) -> None:
    for line in iter(stream.readline, ""):
        if verbose or not _CHATTER.match(line):
            out.write(prefix + line)
            out.flush()
    stream.close()


def launch(
    command: list[str],
    processes: int,
    devices: int,
    port: int | None = None,
    verbose: bool = False,
) -> int:
    """Runs `python COMMAND` `processes` times; -> 0, or the first failing child's code."""
    port = port or free_port()
    children, threads = [], []
    for index in range(processes):
        child = subprocess.Popen(
            [sys.executable, *command],
            env=child_env(index, processes, port, devices),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        print(f"launch: process {index} pid {child.pid}", file=sys.stderr, flush=True)
        for stream, out in ((child.stdout, sys.stdout), (child.stderr, sys.stderr)):
            thread = threading.Thread(target=_forward, args=(stream, out, f"[{index}] ", verbose))
            thread.start()
            threads.append(thread)

    signalled_at = []

    def relay(signum, frame):
        del frame
        signalled_at.append(time.time())
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, relay) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code, failed_at = 0, None
        while any(child.poll() is None for child in children):
            codes = [child.poll() for child in children]
            if failed_at is None and any(c not in (None, 0) for c in codes):
                failed_at = time.time()
            # A child that failed leaves its peers waiting; a signalled one that hangs (JAX
            # turns SIGTERM into a preemption notice) is killed after the save's grace period.
            late = signalled_at and time.time() - signalled_at[0] > SIGNAL_GRACE_SECONDS
            if late or (failed_at is not None and time.time() - failed_at > FAILURE_GRACE_SECONDS):
                for child in children:
                    if child.poll() is None:
                        child.kill()
            time.sleep(0.1)
        for child in children:
            if child.returncode != 0 and code == 0:
                code = child.returncode
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for thread in threads:
            thread.join()
    return code if code >= 0 else 128 - code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m swifti2v_jax.launch", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--devices-per-process", type=int, default=1, help="CPU devices each")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument("--verbose", action="store_true", help="keep Gloo's connection lines")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- SCRIPT.py ARGS | -m MOD")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --, e.g. -- train.py --config=...")
    if args.processes < 1 or args.devices_per_process < 1:
        parser.error("--processes and --devices-per-process must be >= 1")
    return launch(
        command, args.processes, args.devices_per_process, args.port or None, args.verbose
    )


if __name__ == "__main__":
    sys.exit(main())
