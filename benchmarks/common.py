"""Shared benchmark helpers: timing, peak memory, XLA cost/memory analysis, DiT FLOP counting.

Conventions used by every benchmark here:
- times are medians of several runs after a warm-up; when programs are compared against each
  other they are timed round-robin (one run of each per round) so that load from other
  processes on a shared machine hits all of them alike;
- peak memory is reported twice: XLA's `compiled.memory_analysis()` (what the compiled program
  needs: arguments + outputs + temporaries, independent of allocator and runtime overheads) and
  the measured peak of a fresh worker process (device `peak_bytes_in_use` on GPU/TPU, the
  process' peak RSS on CPU, which also counts the Python/JAX runtime and compilation);
- FLOPs come from XLA's cost analysis, corrected for loops: XLA counts a `lax.scan` body once,
  not once per trip, so DiT FLOPs are measured on UNROLLED 1- and 2-layer variants and
  extrapolated linearly in the number of layers (exact: every layer is the same program).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax.models.dit import DiTConfig, WanDiT

RESULT_MARKER = "BENCHMARK_RESULT "


# --------------------------------------------------------------------------------------------
# Environment


def backend_info() -> dict:
    device = jax.devices()[0]
    return dict(
        platform=device.platform,
        device_kind=getattr(device, "device_kind", "unknown"),
        device_count=jax.device_count(),
        cpu_count=os.cpu_count(),
        machine=platform.machine(),
        jax_version=jax.__version__,
        python=platform.python_version(),
    )


def on_cpu() -> bool:
    return jax.devices()[0].platform == "cpu"


def default_attention_backend() -> str:
    """The fastest attention backend of the current platform (FLOPs are always counted on xla)."""
    return {"gpu": "cudnn", "tpu": "splash"}.get(jax.devices()[0].platform, "chunked")


# --------------------------------------------------------------------------------------------
# Timing


def block(tree):
    """Waits for every array in `tree` (JAX dispatch is asynchronous)."""
    ready = lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x
    return jax.tree.map(ready, tree)


def time_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    block(fn())
    return time.perf_counter() - start


def summarize(seconds: Sequence[float]) -> dict:
    seconds = [float(s) for s in seconds]
    return dict(median=float(np.median(seconds)), min=min(seconds), max=max(seconds), runs=seconds)


def time_round_robin(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    repeats: dict[str, int] | None = None,
) -> dict[str, dict]:
    """Median-of-`rounds` timing of several zero-argument callables, interleaved per round.

    repeats[name] = k makes each sample of `name` k back-to-back calls (reported per call), so
    that a short program's sample spans about as long as a long one's and both see the same
    load on a shared machine (e.g. k = segments per clip for a CSG window vs one end-to-end
    forward). Returns per name: median/min/max/runs in seconds per call.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    repeats = repeats or {}
    for _ in range(warmup):
        for fn in fns.values():
            block(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            k = repeats.get(name, 1)
            start = time.perf_counter()
            for _ in range(k):
                block(fn())
            times[name].append((time.perf_counter() - start) / k)
    return {name: {**summarize(ts), "calls_per_sample": repeats.get(name, 1)}
            for name, ts in times.items()}  # fmt: skip


def matmul_peak(dtype=None, sizes: Sequence[int] | None = None, runs: int = 5) -> dict:
    """Best achieved FLOP/s of a square matmul (the 'peak' model FLOP utilisation is against).

    fp32 on CPU, bf16 on accelerators (what the DiT runs in there). Best of all runs and sizes,
    because a peak is a best case; on a loaded machine the median would be noise.
    """
    accelerator = not on_cpu()
    dtype = dtype or (jnp.bfloat16 if accelerator else jnp.float32)
    sizes = sizes or ((4096, 8192) if accelerator else (1024, 2048))
    best, per_size = 0.0, {}
    matmul = jax.jit(lambda a, b: a @ b)
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), dtype)
        block(matmul(a, b))
        seconds = min(time_call(lambda a=a, b=b: matmul(a, b)) for _ in range(runs))
        per_size[str(n)] = 2 * n**3 / seconds
        best = max(best, per_size[str(n)])
    return dict(flops_per_second=best, dtype=jnp.dtype(dtype).name, per_size=per_size)


# --------------------------------------------------------------------------------------------
# Memory


def peak_rss_bytes() -> int:
    """Peak resident set size of THIS process' address space so far, in bytes.

    Linux: VmHWM from /proc/self/status. Not `getrusage(...).ru_maxrss`: the kernel carries
    ru_maxrss over exec() from the forked parent, so a worker started by a big parent process
    reports at least the parent's size. VmHWM belongs to the new address space. Elsewhere
    ru_maxrss is the fallback (macOS reports it in bytes, Linux in KiB).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def device_peak_bytes() -> int | None:
    """peak_bytes_in_use of device 0 (GPU/TPU); None where the backend does not track it (CPU)."""
    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    return stats.get("peak_bytes_in_use")


def memory_of(compiled) -> dict | None:
    """XLA's static memory plan of a compiled program, in bytes."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if stats is None:
        return None
    fields = dict(
        argument=int(stats.argument_size_in_bytes),
        output=int(stats.output_size_in_bytes),
        alias=int(stats.alias_size_in_bytes),
        temp=int(stats.temp_size_in_bytes),
    )
    fields["peak"] = fields["argument"] + fields["output"] + fields["temp"] - fields["alias"]
    return fields


# --------------------------------------------------------------------------------------------
# Cost analysis


def cost_of(lowered_or_compiled) -> dict:
    """{'flops', 'bytes_accessed', 'transcendentals'} from XLA (a dict or a list of dicts)."""
    analysis = lowered_or_compiled.cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return dict(
        flops=float(analysis.get("flops", 0.0)),
        bytes_accessed=float(analysis.get("bytes accessed", 0.0)),
        transcendentals=float(analysis.get("transcendentals", 0.0)),
    )


def jaxpr_flops(fn: Callable, *args) -> dict:
    """2 x multiply-adds of every matmul and convolution in fn's jaxpr, loops multiplied out.

    A cross-check of XLA's cost analysis that needs no compilation and, unlike it, counts a
    `scan` body `length` times. Elementwise work is not counted (a few % for these models).
    A `while` loop's trip count is unknown at trace time: its body is counted once and the
    result says so ('while_loops' > 0).
    """
    closed = jax.make_jaxpr(fn)(*args)
    counter = {"while_loops": 0}
    flops = _count_jaxpr(closed.jaxpr, counter)
    return dict(flops=flops, while_loops=counter["while_loops"])


def _count_jaxpr(jaxpr, counter) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            contract = int(np.prod([lhs[d] for d in lhs_contract]))
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * contract
        elif name == "conv_general_dilated":
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
            kernel = eqn.invars[1].aval.shape
            per_output = kernel[rhs_spec[1]] * np.prod([kernel[d] for d in rhs_spec[2:]])
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * per_output
        elif name == "scan":
            total += eqn.params["length"] * _count_jaxpr(eqn.params["jaxpr"].jaxpr, counter)
        elif name == "while":
            counter["while_loops"] += 1
            total += _count_jaxpr(eqn.params["body_jaxpr"].jaxpr, counter)
        elif name == "cond":
            total += max(_count_jaxpr(b.jaxpr, counter) for b in eqn.params["branches"])
        else:  # pjit, remat, custom_jvp/vjp calls...: count their inner jaxprs once
            for value in eqn.params.values():
                inner = getattr(value, "jaxpr", value)
                if hasattr(inner, "eqns"):
                    total += _count_jaxpr(inner, counter)
    return float(total)


# --------------------------------------------------------------------------------------------
# DiT programs


@dataclasses.dataclass(frozen=True)
class DiTProgram:
    """One DiT forward: a model on a latent grid (T, h, w) with `clean` leading blocks at t=0.

    Context blocks (the anchor, CSG neighbours) get timestep 0 and noisy blocks t, exactly like
    a CSG window or the TI2V image-to-video end-to-end pass; that does not change the cost.
    """

    name: str
    model: DiTConfig
    latent_grid: tuple[int, int, int]
    text_len: int = 512
    clean: int = 1
    description: str = ""

    @property
    def tokens(self) -> int:
        return dit_tokens(self.model, self.latent_grid)

    def with_model(self, **changes) -> DiTProgram:
        return dataclasses.replace(self, model=self.model.replace(**changes))


def dit_tokens(config: DiTConfig, latent_grid: tuple[int, int, int]) -> int:
    frames, height, width = latent_grid
    pt, ph, pw = config.patch_size
    if frames % pt or height % ph or width % pw:
        raise ValueError(f"latent grid {latent_grid} is not divisible by patch {config.patch_size}")
    return (frames // pt) * (height // ph) * (width // pw)


def forward_fn(config: DiTConfig):
    """jit(params, latents, timesteps [B, T], context) -> velocity: one DiT forward."""
    model = WanDiT(config)
    return jax.jit(lambda p, x, t, c: model.apply({"params": p}, x, t, c))


def abstract_inputs(program: DiTProgram, batch: int = 1):
    """ShapeDtypeStructs (latents, timesteps, context) for lowering without allocating."""
    cfg = program.model
    dtype = jnp.dtype(cfg.compute_dtype)
    frames, height, width = program.latent_grid
    return (
        jax.ShapeDtypeStruct((batch, frames, height, width, cfg.in_dim), dtype),
        jax.ShapeDtypeStruct((batch, frames), jnp.float32),
        jax.ShapeDtypeStruct((batch, program.text_len, cfg.text_dim), dtype),
    )


def concrete_inputs(program: DiTProgram, seed: int = 0, batch: int = 1, timestep: float = 500.0):
    """Random numpy inputs (latents, timesteps, context) in fp32 (cast by the model)."""
    rng = np.random.default_rng(seed)
    cfg = program.model
    frames, height, width = program.latent_grid
    latents = rng.standard_normal((batch, frames, height, width, cfg.in_dim), np.float32)
    timesteps = np.full((batch, frames), timestep, np.float32)
    timesteps[:, : program.clean] = 0.0
    context = rng.standard_normal((batch, program.text_len, cfg.text_dim), np.float32)
    return latents, timesteps, context


def abstract_dit_params(config: DiTConfig):
    from swifti2v_jax.models.dit import abstract_params

    return abstract_params(config)


def random_params(config: DiTConfig, seed: int = 0):
    """Random DiT parameters of the right shapes, made with numpy on the host.

    Benchmarks only need well-scaled numbers. Running the Flax initialiser would compile an
    XLA program whose compile-time memory (~200 MB on CPU) would mask the peak memory of the
    program being measured. Norm scales are 1, everything else ~N(0, 1/fan_in).
    """
    rng = np.random.default_rng(seed)

    def make(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']"):
            return np.ones(leaf.shape, leaf.dtype)
        fan_in = leaf.shape[-2] if len(leaf.shape) >= 2 else 1
        values = rng.standard_normal(leaf.shape, np.float32) / np.sqrt(max(fan_in, 1))
        return jnp.asarray(values, leaf.dtype)

    return jax.tree_util.tree_map_with_path(make, abstract_dit_params(config))


def lower_forward(program: DiTProgram):
    """The program's forward lowered from abstract params and inputs (nothing is allocated)."""
    params = abstract_dit_params(program.model)
    return forward_fn(program.model).lower(params, *abstract_inputs(program))


def dit_flops(program: DiTProgram) -> dict:
    """XLA FLOPs/bytes of one forward, loop-corrected by layer extrapolation (see module doc).

    Also returns what XLA reports for the scanned program as is ('scan_reported_flops'), to
    document the undercount, and the analytic count as a cross-check.
    """
    costs = []
    for layers in (1, 2):
        variant = program.with_model(num_layers=layers, scan_layers=False, attention_backend="xla")
        costs.append(cost_of(lower_forward(variant)))
    per_layer = {k: costs[1][k] - costs[0][k] for k in costs[0]}
    outside = {k: costs[0][k] - per_layer[k] for k in costs[0]}
    layers = program.model.num_layers
    total = {k: outside[k] + layers * per_layer[k] for k in costs[0]}
    scanned = cost_of(lower_forward(program.with_model(scan_layers=True, attention_backend="xla")))
    return dict(
        flops=total["flops"],
        bytes_accessed=total["bytes_accessed"],
        transcendentals=total["transcendentals"],
        flops_per_layer=per_layer["flops"],
        flops_outside_layers=outside["flops"],
        scan_reported_flops=scanned["flops"],
        analytic_flops=analytic_dit_flops(program),
    )


def analytic_dit_flops(program: DiTProgram) -> float:
    """2 x multiply-adds of every matmul of a Wan DiT forward (elementwise work ignored)."""
    cfg = program.model
    tokens, text, d, f = program.tokens, program.text_len, cfg.dim, cfg.ffn_dim
    patch = int(np.prod(cfg.patch_size))
    frames = program.latent_grid[0] // cfg.patch_size[0]
    per_layer = (
        tokens * (8 * d * d)  # self-attention q, k, v, o
        + 4 * tokens * tokens * d  # q k^T and (attn) v
        + tokens * 4 * d * d + text * 4 * d * d  # cross-attention q, o / k, v
        + 4 * tokens * text * d  # cross-attention scores and values
        + tokens * 4 * d * f  # feed-forward
    )  # fmt: skip
    outside = (
        2 * tokens * patch * cfg.in_dim * d  # patch embedding
        + 2 * text * (cfg.text_dim * d + d * d)  # text embedding
        + 2 * frames * (cfg.freq_dim * d + d * d + 6 * d * d)  # time MLP and projection
        + 2 * tokens * d * patch * cfg.out_dim  # head
    )
    return float(cfg.num_layers * per_layer + outside)


def compile_memory(program: DiTProgram) -> dict | None:
    """memory_analysis of the real (scanned) forward compiled from abstract arrays."""
    return memory_of(lower_forward(program).compile())


# --------------------------------------------------------------------------------------------
# Worker subprocesses (fresh process per measurement, so peak memory is per configuration)


def run_worker(module: str, task: dict, timeout: float = 1200) -> dict:
    """Runs `python -m module --worker JSON` and returns the JSON it printed after the marker."""
    cmd = [sys.executable, "-m", module, "--worker", json.dumps(task)]
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=str(root), env=env
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    raise RuntimeError(
        f"worker {module} {task} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )


def emit_worker_result(result: dict) -> None:
    print(RESULT_MARKER + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------
# Output


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_to_json) + "\n")
    tmp.replace(path)


def write_outputs(out: Path, report: dict, markdown, plot, figure: str) -> None:
    """A benchmark's results: OUT/results.json, OUT/results.md (also printed) and its figure."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", report)
    text = markdown(report)
    (out / "results.md").write_text(text)
    plot(report, out / figure)
    print(text)
    print(f"wrote {out}/results.json, results.md, {figure}")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (benchmarks never open windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _to_json(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s >= 100:
        return f"{s:,.0f} s"
    if s >= 1:
        return f"{s:.2f} s"
    return f"{s * 1e3:.1f} ms"


def fmt_flops(f: float | None) -> str:
    return "n/a" if f is None else f"{f:.3g}"
