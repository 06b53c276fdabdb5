"""The whole-run memory and transfer plan: what `sample.py --plan` prints and a run checks.

Before any weight is loaded, `whole_run(specs, config, sizes, target)` walks the phases of
the streamed run (sampling/orchestrator.py `run`) and counts, for each:

- device bytes: the arrays resident at that moment (weights, caches, anchor, buffers) plus the
  running program's own bytes from XLA's memory plan (program_memory.py: compiled for the
  target, or XLA:CPU as the GPU proxy);
- host bytes: the process's runtime (local: measured, `local_runtime_bytes`), weights on the
  host (umT5 with text_encoder_on_host, streamed kernels in pinned memory, a checkpoint being
  loaded and quantized), VAE tile caches kept in host memory, the tile-major decode's pixel
  buffer;
- host <-> device bytes moved by the phase over the whole clip (it may run many times).

The peaks are the largest phase figures; `check` raises PlanError naming the phase and the
excess when one is over the budget. docs/memory.md explains every row.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import sys

import jax
import numpy as np

from swifti2v_jax.models import layer_streaming
from swifti2v_jax.models import t5 as t5_lib
from swifti2v_jax.models import vae as vae_lib
from swifti2v_jax.sampling import program_memory, stage1
from swifti2v_jax.sampling import programs as programs_lib
from swifti2v_jax.sampling.config import PipelineConfig, PipelineError
from swifti2v_jax.sampling.models import ModelSpecs
from swifti2v_jax.sampling.plan import SizePlan

GB = 1e9
# The host runtime of a remote target (Python, jax, XLA and its plugin, executables, compile
# scratch), not counted elsewhere; the local target measures its own (`local_runtime_bytes`).
# An allowance above what was measured here (docs/memory.md, "The runtime row"): a jax
# process with libtpu loaded holds 0.48 GB before compiling, and the CPU runs at demo / mid
# size peak at 0.52-0.87 GB with under 0.03 GB of arrays; CUDA's libraries were not measured.
RUNTIME_BYTES = int(2e9)


class PlanError(PipelineError):
    """The plan exceeds a budget (one line: the phase and the excess)."""


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    compiler: str  # program_memory.COMPILERS
    device_budget: float | None  # bytes; None: not checked
    host_budget: float | None
    about: str


TARGETS = {
    "local": Target(
        "local",
        "local",
        None,
        None,
        "this machine: programs compiled on its default backend; host = this process",
    ),
    "gpu-24gb": Target(
        "gpu-24gb",
        "cpu",
        22 * GB,
        48 * GB,
        "one 24 GB GPU with 64 GB of RAM (22 GB device budget: CUDA context and allocator "
        "slack; 48 GB host); device programs: XLA:CPU memory plans as the proxy (jax has no "
        "compile-only CUDA backend)",
    ),
    "v5e-1": Target(
        "v5e-1",
        "v5e",
        15 * GB,
        48 * GB,
        "one 16 GB TPU v5e chip (15 GB budget), programs compiled by libtpu (compile-only)",
    ),
    "v6e-1": Target(
        "v6e-1",
        "v6e",
        31 * GB,
        48 * GB,
        "one 32 GB TPU v6e chip (31 GB budget), programs compiled by libtpu (compile-only)",
    ),
}


@dataclasses.dataclass
class Phase:
    name: str
    runs: int  # times per clip
    program: str  # the largest program of the phase ('' = none)
    program_bytes: int
    device: dict[str, int]  # resident arrays besides the program's own
    host: dict[str, int]
    transfer_bytes: int  # host <-> device, the whole clip

    @property
    def device_bytes(self) -> int:
        return self.program_bytes + sum(self.device.values())

    @property
    def host_bytes(self) -> int:
        return sum(self.host.values())

    def as_dict(self) -> dict:
        return dict(
            name=self.name, runs=self.runs, program=self.program,
            program_bytes=self.program_bytes, device_bytes=self.device_bytes,
            device_resident=dict(self.device), host_bytes=self.host_bytes, host=dict(self.host),
            transfer_bytes=self.transfer_bytes,
        )  # fmt: skip


@dataclasses.dataclass
class RunPlan:
    target: Target
    phases: list[Phase]
    sizes: SizePlan
    device_budget: float | None
    host_budget: float | None
    program_source: str
    notes: list[str]
    vae_stream_bytes: int = 0  # of transfer_bytes: VAE caches and tile-major pixels

    def _peak(self, key) -> tuple[int, str]:
        phase = max(self.phases, key=key)
        return key(phase), phase.name

    @property
    def device_peak(self):
        return self._peak(lambda p: p.device_bytes)

    @property
    def host_peak(self):
        return self._peak(lambda p: p.host_bytes)

    @property
    def transfer_bytes(self) -> int:
        return sum(p.transfer_bytes for p in self.phases)

    def as_dict(self) -> dict:
        (device, device_at), (host, host_at) = self.device_peak, self.host_peak
        return dict(
            target=self.target.name, target_about=self.target.about,
            program_source=self.program_source, frames=self.sizes.frames,
            width=self.sizes.width, height=self.sizes.height,
            device_peak_bytes=device, device_peak_phase=device_at, host_peak_bytes=host,
            host_peak_phase=host_at, transfer_bytes=self.transfer_bytes,
            device_budget_bytes=self.device_budget, host_budget_bytes=self.host_budget,
            phases=[p.as_dict() for p in self.phases], notes=list(self.notes),
            vae_stream_bytes=self.vae_stream_bytes,
        )  # fmt: skip

    def check(self) -> None:
        """PlanError (one line) when a peak is over its budget."""
        for what, (peak, phase), budget in (
            ("device", self.device_peak, self.device_budget),
            ("host", self.host_peak, self.host_budget),
        ):
            if budget and peak > budget:
                raise PlanError(
                    f"the run does not fit {self.target.name}: {what} memory in phase "
                    f"'{phase}' is {peak / GB:.2f} GB, {(peak - budget) / GB:.2f} GB over the "
                    f"{budget / GB:.2f} GB budget (sample.py --plan shows every phase)"
                )

    def table(self) -> str:
        rows = [
            f"memory plan: {self.sizes.frames} frames at {self.sizes.width}x{self.sizes.height}"
            f", target {self.target.name} ({self.target.about}); programs: "
            f"{self.program_source}",
            f"{'phase':<34} {'runs':>5} {'device GB':>10} {'program GB':>11} {'host GB':>8} "
            f"{'moved GB':>9}",
        ]
        for p in self.phases:
            rows.append(
                f"{p.name:<34} {p.runs:>5} {p.device_bytes / GB:>10.2f} "
                f"{p.program_bytes / GB:>11.2f} {p.host_bytes / GB:>8.2f} "
                f"{p.transfer_bytes / GB:>9.2f}"
            )
        (device, device_at), (host, host_at) = self.device_peak, self.host_peak
        budget = lambda b: f" (budget {b / GB:.2f})" if b else ""
        rows += [
            f"device peak {device / GB:.2f} GB in '{device_at}'{budget(self.device_budget)}; "
            f"host peak {host / GB:.2f} GB in '{host_at}'{budget(self.host_budget)}; "
            f"host<->device {self.transfer_bytes / GB:.2f} GB per clip",
            *self.notes,
        ]
        return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# Sizes


def tree_bytes(tree, host: bool | None = None) -> int:
    """Bytes of a tree of arrays / ShapeDtypeStructs; host=True only pinned-host leaves,
    False only the others."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if not hasattr(leaf, "shape"):
            continue
        on_host = (
            getattr(getattr(leaf, "sharding", None), "memory_kind", None) == layer_streaming.HOST
        )
        if host is None or host == on_host:
            total += math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
    return total


def array_bytes(shape, dtype=np.float32) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def process_rss() -> int:
    """This process's resident set now (Linux /proc; else its peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def local_runtime_bytes(programs) -> int:
    """This process's resident set once the run's programs are compiled on its backend: the
    runtime a local run holds besides its arrays (Python, jax and XLA, the executables and
    what compiling them left behind). With the run's persistent compilation cache the
    compiles are loads, as in the run."""
    executables = [p.fn.lower(*p.args).compile() for p in programs]
    rss = process_rss()
    del executables
    return rss


def _tile_cache_bytes(step_fn, params, config, first_in) -> int:
    _, cache = jax.eval_shape(lambda p, x: step_fn(p, config, None, x, True), params, first_in)
    return tree_bytes(cache)


@dataclasses.dataclass(frozen=True)
class _Stream:
    """A tiled VAE stream of the run: tiles, one tile's cache, where the caches live."""

    tiles: int
    cache: int  # one tile's (or the whole frame's) causal cache, float32 bytes
    tile_out: int  # one tile's output elements per frame (pixels x channels)
    tile_major: bool
    offload: bool  # frame-major caches in host memory between steps
    carry_dtype_bytes: int  # tile-major carried caches: 4 (float32) or 2 (bfloat16)

    @property
    def device_others(self) -> int:
        """Caches on the device besides the running tile's."""
        return 0 if self.tile_major or self.offload else (self.tiles - 1) * self.cache

    def host(self, carried: bool) -> int:
        if self.tile_major:
            return self.tiles * self.cache * self.carry_dtype_bytes // 4 if carried else 0
        return self.tiles * self.cache if self.offload else 0


def _vae_stream(config, params, step_fn, latent_hw, tiles, s_in, s_out, tile_major, offload,
                cache_dtype) -> _Stream:  # fmt: skip
    """tiles: (tile_size, overlap); s_in / s_out: input / output pixels per latent pixel."""
    tiling = vae_lib.make_tiling(*latent_hw, *tiles) if tiles[0] else None
    th, tw = (tiling.tile_h, tiling.tile_w) if tiling else latent_hw
    n = len(tiling.origins) if tiling else 1
    channels_in = 3 if s_in > 1 else config.z_dim
    channels_out = 3 if s_out > 1 else config.z_dim
    first = jax.ShapeDtypeStruct((1, 1, th * s_in, tw * s_in, channels_in), np.float32)
    cache = _tile_cache_bytes(step_fn, params, config, first)
    carry = 2 if cache_dtype == "bfloat16" else 4
    tiled = tiling is not None
    out = th * s_out * tw * s_out * channels_out
    return _Stream(n, cache, out, tile_major and tiled, offload and tiled, carry)


# ---------------------------------------------------------------------------------------------
# The plan


def program_context(specs: ModelSpecs, config: PipelineConfig) -> str:
    """What shapes a program's body besides its inputs (part of its cache key)."""
    return repr((specs, config.stage1, config.stage2, config.text_len))


def whole_run(
    specs: ModelSpecs, config: PipelineConfig, sizes: SizePlan, target: Target | str,
    *, on_compile=None, compile_missing: bool = True, measure_runtime: bool = False,
) -> RunPlan:  # fmt: skip
    """The phases of `orchestrator.run` for `sizes` on `target` (no weights, no data).
    compile_missing=False: programs not yet compiled for a TPU target use XLA:CPU's figure
    (listed in the notes) instead of compiling with libtpu (minutes each at 2K).
    measure_runtime (target local): the runtime row is this process with the run's programs
    compiled (`local_runtime_bytes`; `--plan`), else its RSS now (a run's own check, which
    must not compile its programs twice)."""
    target = TARGETS[target] if isinstance(target, str) else target
    memory, cfg1 = config.memory, config.stage1
    programs = programs_lib.streamed_programs(specs, config, sizes)
    stats = program_memory.analyse(
        programs, target.compiler, program_context(specs, config), on_compile, compile_missing
    )
    prog = lambda name: stats[name]["device_bytes"] if name in stats else 0

    def largest(*names):
        names = [n for n in names if n in stats]
        name = max(names, key=prog)
        return name, prog(name)

    notes: list[str] = []
    if target.compiler != "local":
        runtime = RUNTIME_BYTES
    else:
        runtime = local_runtime_bytes(programs) if measure_runtime else process_rss()
    text = array_bytes((1, config.text_len, specs.stage1.text_dim))
    contexts = text * (2 if config.needs_negative_prompt else 1)

    # Weights as the run holds them.
    t5_params = jax.eval_shape(lambda: t5_lib.init_params(specs.t5, jax.random.key(0)))
    t5 = tree_bytes(t5_params)
    vae1 = tree_bytes(vae_lib.abstract_params(specs.stage1_vae))
    p_vae2 = vae_lib.abstract_params(specs.vae)
    vae2 = tree_bytes(p_vae2)
    vae2_encoder = tree_bytes({k: v for k, v in p_vae2.items() if k != "decoder"})
    native1 = tree_bytes(programs_lib.dit_params(specs.stage1.replace(stream_layers=False)))
    expert = programs_lib.dit_params(specs.stage1, memory.dit_weights)
    expert_device, expert_host = tree_bytes(expert, False), tree_bytes(expert, True)
    dit2 = programs_lib.dit_params(specs.stage2, memory.dit_weights)
    dit2_device, dit2_host = tree_bytes(dit2, False), tree_bytes(dit2, True)
    native2 = tree_bytes(programs_lib.dit_params(specs.stage2.replace(stream_layers=False)))
    quantizing = memory.dit_weights != "native"
    # Loading a DiT: the stored tree (converted: native) and, quantizing at load, the
    # quantized copy next to it; then the quantized tree and its placed copy (pinned).
    load1 = max(native1 + (expert_device + expert_host if quantizing else 0),
                expert_device + 2 * expert_host)  # fmt: skip
    load2 = max(native2 + (dit2_device + dit2_host if quantizing else 0),
                dit2_device + 2 * dit2_host)  # fmt: skip

    # Clip structure.
    num_latent1 = vae_lib.num_latent_frames(specs.stage1_vae, sizes.frames)
    chunks = len(stage1.chunk_plan(num_latent1, cfg1.chunk_latents, cfg1.overlap))
    length = stage1.chunk_length(num_latent1, cfg1)
    chunk_frames = vae_lib.num_pixel_frames(specs.stage1_vae, length)
    latent2 = sizes.latent_frames
    window = sizes.windows[0].size
    block = array_bytes((1, 1, *sizes.latent_hw, specs.vae.z_dim))
    s2, t2 = vae_lib.spatial_factor(specs.vae), vae_lib.temporal_factor(specs.vae)
    frame_hi = array_bytes((1, 1, sizes.height, sizes.width, 3))
    frame_lo = array_bytes((1, 1, sizes.stage1_height, sizes.stage1_width, 3))
    video_low = chunk_frames * frame_lo
    image_hi, image_lo = frame_hi, frame_lo
    pixels_out = sizes.frames * sizes.height * sizes.width * 3  # uint8 frames to the writer

    # The 2K VAE streams.
    encode = _vae_stream(
        specs.vae, p_vae2, vae_lib._encode_step, sizes.latent_hw,
        (memory.encode_tile_size, memory.encode_tile_overlap), s2, 1, memory.encode_tile_major,
        memory.encode_offload_cache, memory.vae_cache_dtype,
    )  # fmt: skip
    decode = _vae_stream(
        specs.vae, p_vae2, vae_lib._decode_step, sizes.latent_hw,
        (memory.decode_tile_size, memory.decode_tile_overlap), 1, s2,
        memory.decode_chunk_latents > 0, memory.decode_offload_cache, memory.vae_cache_dtype,
    )  # fmt: skip
    decode_chunk = memory.decode_chunk_latents if decode.tile_major else 0
    decode_chunks = math.ceil(latent2 / decode_chunk) if decode_chunk else latent2
    encode_steps = (sizes.frames - 1) // t2 + 1
    # Caches that wait in host memory while the other stages run.
    encode_host = encode.host(carried=chunks > 1)
    decode_host = decode.host(carried=decode_chunks > 1)
    # Tile-major decode: a chunk's pixels blended in host memory.
    pixel_buffer = (
        array_bytes((1, t2 * decode_chunk + 1, sizes.height, sizes.width, 3)) if decode_chunk else 0
    )
    if encode.tile_major:
        encode_moved = (
            2 * max(chunks - 1, 0) * encode.tiles * encode.cache * encode.carry_dtype_bytes // 4
        )
    elif encode.offload:
        encode_moved = (2 * encode_steps - 1) * encode.tiles * encode.cache
    else:
        encode_moved = 0
    if decode.tile_major:
        decode_moved = (
            2 * (decode_chunks - 1) * decode.tiles * decode.cache * decode.carry_dtype_bytes // 4
        )
        # every tile's float32 pixels come to the host blend
        decode_moved += sizes.frames * decode.tiles * decode.tile_out * 4
    elif decode.offload:
        decode_moved = (2 * latent2 - 1) * decode.tiles * decode.cache + pixels_out
    else:
        decode_moved = pixels_out

    phases: list[Phase] = []
    text_on_host = memory.text_encoder_on_host
    phases.append(Phase(
        "text encode (umT5)", 1, "", 0,
        {} if text_on_host else {"umT5": t5, "contexts": contexts},
        {"runtime": runtime, **({"umT5 (host CPU)": t5} if text_on_host else {})},
        contexts if text_on_host else t5 + contexts,
    ))  # fmt: skip

    # Stage I, per chunk.
    swaps = cfg1.backbone == "a14b" and memory.swap_stage1_experts
    stage1_resident = {"contexts": contexts, "Stage I VAE": vae1, "image": image_lo}
    # A later chunk's Stage I runs while the 2K VAE caches wait (none in a one-chunk clip).
    host_s1 = {"runtime": runtime, "caches carried": (encode_host + decode_host) * (chunks > 1)}
    if cfg1.backbone == "a14b":
        schedule = cfg1.sampling_schedule
        high = cfg1.guidance().num_high_noise_steps(schedule.timesteps)
        low, high_scale = cfg1.guidance().scales
        steps = {"high_noise": high, "low_noise": schedule.num_steps - high}
        scales = {"high_noise": high_scale, "low_noise": low}
        name, size = largest("stage1_condition_encode_first", "stage1_condition_encode_rest")
        phases.append(Phase(
            "Stage I condition encode", chunks, name, size,
            {"contexts": contexts, "image": image_lo}, dict(host_s1), 0,
        ))  # fmt: skip
        for expert_name in ("high_noise", "low_noise"):
            forwards = steps[expert_name] * (2 if scales[expert_name] != 1.0 else 1)
            program = f"stage1_a14b_{expert_name}" if swaps else "stage1_a14b_experts"
            others = dict(stage1_resident)
            if not swaps:
                others["the other expert"] = expert_device
            loads = chunks if swaps else 1
            moved = loads * (expert_device + expert_host) + chunks * forwards * expert_host
            phases.append(Phase(
                f"Stage I {expert_name} expert", chunks, program, prog(program), others,
                {**host_s1, "expert (pinned kernels)": expert_host,
                 "expert load (transient)": load1 - expert_host},
                moved,
            ))  # fmt: skip
    else:
        forwards = cfg1.steps * (2 if cfg1.uses_cfg else 1)
        phases.append(Phase(
            "Stage I DiT chunk", chunks, "stage1_dit_chunk", prog("stage1_dit_chunk"),
            stage1_resident, {**host_s1, "DiT (pinned kernels)": expert_host,
                              "DiT load (transient)": load1 - expert_host},
            expert_device + expert_host + chunks * forwards * expert_host,
        ))  # fmt: skip
    name, size = largest("stage1_decode_first", "stage1_decode_step")
    phases.append(Phase(
        "Stage I decode", chunks, name, size,
        {"contexts": contexts, "image": image_lo, "video chunk": video_low}, dict(host_s1), 0,
    ))  # fmt: skip

    # Stage II: the streamed reference encode, windows and decode, side by side.
    shared = {"contexts": contexts, "anchor": block, "reference blocks": (window + 2) * block}
    dit2_side = {"Stage II DiT": dit2_device}
    host_s2 = {"runtime": runtime, "Stage II DiT (pinned kernels)": dit2_host,
               "encoder caches": encode_host, "decoder caches": decode_host,
               "pixel buffer": pixel_buffer}  # fmt: skip
    encode_names = [n for n in stats if n.startswith("reference_encode")] + ["reference_resize"]
    name, size = largest(*encode_names)
    phases.append(Phase(
        "hybrid reference encode", chunks, name, size,
        {**shared, **dit2_side, "VAE decoder": vae2 - vae2_encoder, "video chunk": video_low,
         "image": image_hi, "encoder caches (other tiles)": encode.device_others,
         "decoder caches": decode.device_others + (0 if decode.offload or decode.tile_major
                                                   else decode.cache)},
        {**host_s2, "Stage II DiT load (transient)": load2 - dit2_host},
        encode_moved + dit2_device + dit2_host + vae2,
    ))  # fmt: skip
    forwards2 = config.stage2.sampling_schedule.num_steps * (
        2 if config.stage2.guide_scale != 1.0 else 1
    )
    forwards2 *= config.stage2.ensemble
    phases.append(Phase(
        "Stage II segment", sizes.segments, "stage2_window", prog("stage2_window"),
        {**shared, "VAE": vae2, "encoder caches": 0 if encode.tile_major or encode.offload
         else encode.tiles * encode.cache,
         "decoder caches": decode.device_others + (0 if decode.offload or decode.tile_major
                                                   else decode.cache),
         "latents waiting for the decoder": decode_chunk * block},
        dict(host_s2), sizes.segments * forwards2 * dit2_host,
    ))  # fmt: skip
    decode_names = [n for n in stats if n.startswith("stage2_decode")]
    name, size = largest(*decode_names)
    phases.append(Phase(
        "decode", decode_chunks, name, size,
        {**shared, **dit2_side, "decoder caches (other tiles)": decode.device_others,
         "encoder caches": 0 if encode.tile_major or encode.offload
         else encode.tiles * encode.cache},
        dict(host_s2), decode_moved,
    ))  # fmt: skip

    if target.compiler == "cpu":
        notes.append("GPU proxy: device programs are XLA:CPU memory plans of the same programs")
    proxied = sorted(n for n, st in stats.items() if st["source"] == "cpu-proxy")
    if proxied:
        notes.append(
            f"not compiled for {target.compiler} yet, XLA:CPU figures instead: "
            f"{', '.join(proxied)} (python -m benchmarks.memory_plans compiles them)"
        )
    if quantizing:
        notes.append(
            f"DiT weights {memory.dit_weights}, quantized while loading a converted (native) "
            "checkpoint; a checkpoint converted with --quantize loads without the native copy"
        )
    source = {"local": f"compiled on {jax.default_backend()}", "cpu": "XLA:CPU (GPU proxy)"}
    device_budget = memory.device_budget_gb * GB or target.device_budget
    host_budget = memory.host_budget_gb * GB or target.host_budget
    stream_bytes = encode_moved + decode_moved - (0 if decode.tile_major else pixels_out)
    return RunPlan(
        target, phases, sizes, device_budget, host_budget,
        source.get(target.compiler, f"libtpu compile-only {target.compiler}"), notes,
        stream_bytes,
    )  # fmt: skip
