"""XLA's memory plan of one compiled program for a target, cached by program and target.

`analyse(programs, compiler)` compiles each program (sampling/programs.py: abstract inputs,
no weights) for `compiler` and returns `compiled.memory_analysis()`'s byte counts:

- 'local': this process's default backend (what the run itself will compile);
- 'cpu': XLA:CPU, the proxy for a GPU target (jax 0.10 has no compile-only CUDA backend);
- 'v5e', 'v6e': one chip of a compile-only libtpu topology (slow for the 2K VAE: minutes
  per program on 2 cores).

Results are cached on disk (<cache>/memory-plans/<key>.json, one file per program) keyed
by the compiler, the jax version, the program's name, input signature and the configs that
shape its body; the package can ship the 2K presets' TPU figures (program_memory.json, by
benchmarks/memory_plans.py), so `sample.py --plan` for a TPU target compiles nothing the
benchmark already compiled.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax

from swifti2v_jax.models import layer_streaming
from swifti2v_jax.sampling import programs as programs_lib

SHIPPED = Path(__file__).with_name("program_memory.json")
COMPILERS = ("local", "cpu", "v5e", "v6e")
# libtpu's smallest topologies are 2x2 hosts; a single-chip program uses the first chip.
_TOPOLOGY = {"v5e": "v5e:2x2", "v6e": "v6e:2x2"}


def cache_dir() -> Path:
    from swifti2v_jax import demo

    return demo.cache_root() / "memory-plans"


def program_key(program: programs_lib.Program, compiler: str, context: str) -> str:
    backend = jax.default_backend() if compiler == "local" else compiler
    text = "|".join((backend, jax.__version__, program.name, program.signature(), context))
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, table: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs recompiling next time
        pass


def target_device(compiler: str):
    if compiler == "local":
        return None
    if compiler == "cpu":
        return jax.devices("cpu")[0]
    # Over-HBM programs report their size instead of failing; other processes may hold libtpu.
    os.environ.setdefault("LIBTPU_INIT_ARGS", "--xla_tpu_no_crash_on_oom=true")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    return topologies.get_topology_desc(platform="tpu", topology_name=_TOPOLOGY[compiler]).devices[
        0
    ]


def device_bytes(stats: dict) -> int:
    """Device bytes of a program: XLA's peak where the backend reports one (TPU), else
    arguments + outputs + temporaries - aliased; host-memory (pinned) bytes excluded."""
    host = stats.get("host_argument_size_in_bytes", 0) + stats.get("host_temp_size_in_bytes", 0)
    if stats.get("peak_memory_in_bytes"):
        return stats["peak_memory_in_bytes"] - host
    total = (
        stats["argument_size_in_bytes"]
        + stats["output_size_in_bytes"]
        + stats["temp_size_in_bytes"]
        - stats["alias_size_in_bytes"]
    )
    return total - host


# Compiled first (the programs that set the peaks), the rest after.
FIRST = ("stage2_decode_tile_step", "stage2_decode_step", "reference_encode_tile_step",
         "reference_encode_step", "stage2_window", "stage1_a14b_high_noise",
         "stage1_a14b_experts", "stage1_dit_chunk")  # fmt: skip


def analyse(
    programs: list[programs_lib.Program],
    compiler: str,
    context: str = "",
    on_compile=None,
    compile_missing: bool = True,
) -> dict[str, dict]:
    """{program name: memory fields + 'device_bytes' + 'source'} for `compiler`.

    compile_missing=False: a program neither shipped nor cached gets XLA:CPU's figure instead
    (source 'cpu-proxy'), so a TPU plan never waits for libtpu."""
    if compiler not in COMPILERS:
        raise ValueError(f"compiler must be one of {COMPILERS}, got {compiler!r}")
    shipped = _read(SHIPPED)
    keys = {p.name: program_key(p, compiler, context) for p in programs}
    found = {p.name: shipped.get(keys[p.name]) or _read(cache_dir() / f"{keys[p.name]}.json")
             for p in programs}  # fmt: skip
    missing = [p for p in programs if not found[p.name]]
    missing.sort(key=lambda p: FIRST.index(p.name) if p.name in FIRST else len(FIRST))
    proxied = set()
    if missing and not compile_missing and compiler != "cpu":
        proxy = analyse(missing, "cpu", context, on_compile)
        for program in missing:
            found[program.name], proxied = proxy[program.name], proxied | {program.name}
        missing = []
    if missing:
        device = target_device(compiler)
        if device is not None:
            missing = programs_lib.place(missing, device)
        for program in missing:  # each saved as it is done: a long sweep can be resumed
            if on_compile is not None:
                on_compile(program.name)
            compiled = program.fn.lower(*program.args).compile()
            stats = compiled.memory_analysis()
            fields = {f: int(getattr(stats, f, 0) or 0) for f in programs_lib.MEMORY_FIELDS}
            fields["peak_memory_in_bytes"] = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
            found[program.name] = dict(fields, program=program.name, compiler=compiler)
            _write(cache_dir() / f"{keys[program.name]}.json", found[program.name])
    out = {}
    for program in programs:
        stats = dict(found[program.name])
        if program.name in proxied:
            out[program.name] = dict(stats, source="cpu-proxy")
            continue
        stats["device_bytes"] = device_bytes(stats)
        if not stats.get("host_argument_size_in_bytes"):  # XLA:CPU counts pinned args too
            stats["device_bytes"] -= _pinned_bytes(program.args)
        stats["source"] = "shipped" if keys[program.name] in shipped else "compiled"
        out[program.name] = stats
    return out


def _pinned_bytes(args) -> int:
    total = 0
    for leaf in jax.tree.leaves(args):
        kind = getattr(getattr(leaf, "sharding", None), "memory_kind", None)
        if kind == layer_streaming.HOST:
            total += leaf.size * leaf.dtype.itemsize
    return total


def ship(programs: list[programs_lib.Program], compiler: str, context: str) -> None:
    """Copies these programs' cached figures into the package table (benchmarks only)."""
    shipped = _read(SHIPPED)
    for program in programs:
        key = program_key(program, compiler, context)
        cached = _read(cache_dir() / f"{key}.json")
        if cached:
            shipped[key] = cached
    SHIPPED.write_text(json.dumps(shipped, indent=1, sort_keys=True) + "\n")
