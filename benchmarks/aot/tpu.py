"""Compile-only TPU targets: named topologies -> meshes, compile + memory figures, HLO reading.

jax[tpu] (the `tpu` extra) ships libtpu, whose compile-only devices let a CPU machine compile
programs for any named topology and read XLA's per-chip memory plan. Nothing runs.
"""

from __future__ import annotations

import os
import re
import time

# Over-HBM programs report their size instead of failing; several processes may load libtpu.
os.environ.setdefault("LIBTPU_INIT_ARGS", "--xla_tpu_no_crash_on_oom=true")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import numpy as np  # noqa: E402
from jax.sharding import AxisType, Mesh  # noqa: E402

from swifti2v_jax.models.partitioning import DATA, FSDP  # noqa: E402

# Per-chip HBM in GB (1e9 bytes), as Cloud TPU lists the chips.
HBM_GB = {"v5e": 16.0, "v5p": 95.0, "v6e": 32.0, "v4": 32.0}

# Topology names for a chip count (they must divide the 2x2x1 host bounds, so there is no
# 1-chip topology: "-1" names a host's topology and single-chip programs use its first chip).
TOPOLOGIES = {
    "v5e": {1: "v5e:2x2", 4: "v5e:2x2", 8: "v5e:2x4", 16: "v5e:4x4", 32: "v5e:4x8", 64: "v5e:8x8"},
    "v6e": {1: "v6e:2x2", 4: "v6e:2x2", 8: "v6e:2x4", 16: "v6e:4x4", 32: "v6e:4x8", 64: "v6e:8x8"},
    "v5p": {1: "v5p:2x2x1", 8: "v5p:2x2x2", 16: "v5p:2x2x4", 32: "v5p:2x4x4", 64: "v5p:4x4x4"},
}


def topology_name(target: str) -> str:
    """'v6e-16' -> 'v6e:4x4' (a name with ':' passes through)."""
    if ":" in target:
        return target
    kind, chips = target.split("-")
    try:
        return TOPOLOGIES[kind][int(chips)]
    except KeyError:
        raise ValueError(f"no topology for {target!r}; known: {sorted(TOPOLOGIES)}") from None


def devices(target: str):
    from jax.experimental import topologies

    return list(
        topologies.get_topology_desc(platform="tpu", topology_name=topology_name(target)).devices
    )


def chip_kind(target: str) -> str:
    return topology_name(target).split(":")[0]


def mesh(target: str, data_size: int = 1) -> Mesh:
    """A ('data', 'fsdp') mesh over every chip of `target`."""
    chips = devices(target)
    grid = np.array(chips).reshape(data_size, len(chips) // data_size)
    return Mesh(grid, (DATA, FSDP), axis_types=(AxisType.Auto,) * 2)


def compile_report(lowerable, args, hbm_gb: float) -> dict:
    """Lowers and compiles `lowerable(*args)`; per-chip memory in GB and compile seconds."""
    start = time.perf_counter()
    lowered = lowerable.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    memory = compiled.memory_analysis()
    gb = lambda name: round(getattr(memory, name) / 1e9, 3)
    report = {
        "args_gb": gb("argument_size_in_bytes"),
        "output_gb": gb("output_size_in_bytes"),
        "alias_gb": gb("alias_size_in_bytes"),
        "temp_gb": gb("temp_size_in_bytes"),
        "peak_gb": gb("peak_memory_in_bytes"),
        "hbm_gb": hbm_gb,
        "lower_seconds": round(lowered_at - start, 1),
        "compile_seconds": round(done - lowered_at, 1),
    }
    report["fits"] = report["peak_gb"] <= hbm_gb
    report["collectives"] = collectives(compiled.as_text())
    return report


# ---------------------------------------------------------------------------------------------
# Where the collectives sit: inside a while loop's body (per layer) or outside.

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_CALLED = re.compile(r"(?:body|condition|to_apply|calls|branch_computations)=\{?([%\w.\-, ]+)\}?")
_OPS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all")


def collectives(hlo: str) -> dict:
    """Counts of all-gather / reduce-scatter / all-reduce / all-to-all ops in while-loop bodies
    (and everything they call) vs the rest of the program."""
    bodies, calls, ops, gathered_bf16 = set(), {}, {}, {}
    current = None
    for line in hlo.splitlines():
        match = _COMPUTATION.match(line)
        if match and not line.startswith(" "):
            current = match.group(1)
            calls[current], ops[current] = set(), {op: 0 for op in _OPS}
            gathered_bf16[current] = 0
            continue
        if current is None:
            continue
        for group in _CALLED.findall(line):
            names = {n.strip().lstrip("%") for n in group.split(",") if n.strip()}
            calls[current] |= names
        body = re.search(r"body=%?([\w.\-]+)", line)
        if body and " while(" in line:
            bodies.add(body.group(1))
        for op in _OPS:
            if re.search(rf"= [^=]*\b{op}(?:-start)?\(", line):
                # TPU writes a reduce-scatter as an all-reduce inside an all-reduce-scatter
                # fusion (it outputs the shard only).
                scatter = op == "all-reduce" and current.startswith("all-reduce-scatter")
                ops[current]["reduce-scatter" if scatter else op] += 1
                if op == "all-gather" and re.search(r"= \(?bf16\[", line):
                    gathered_bf16[current] += 1
    inside, stack = set(), list(bodies)
    while stack:
        name = stack.pop()
        if name in inside or name not in calls:
            continue
        inside.add(name)
        stack.extend(calls[name])
    out = {}
    for op in _OPS:
        out[f"{op}_in_loops"] = sum(ops[c][op] for c in inside)
        out[f"{op}_outside"] = sum(ops[c][op] for c in ops if c not in inside)
    out["all-gather_in_loops_bf16"] = sum(gathered_bf16[c] for c in inside)
    return out
