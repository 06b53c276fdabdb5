"""Fast smoke tests of the benchmark code paths (no wall-clock assertions: numbers only)."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common, csg_scaling, gpu_time
from benchmarks.common import DiTProgram
from swifti2v_jax.models.dit import DiTConfig, WanDiT
from swifti2v_jax.presets import dit as dit_configs


def _tiny(**changes) -> DiTConfig:
    return DiTConfig.from_dict(dit_configs.get("tiny")).replace(**changes)


def test_2k_token_counts_and_segments():
    settings = gpu_time.ClipSettings()
    programs = gpu_time.full_2k_programs(settings)
    tokens = {name: p.tokens for name, p in programs.items()}
    assert tokens == {
        "ti2v_5b_2k_end_to_end": 73_920,
        "wan14b_2k_end_to_end": 295_680,
        "stage2_csg_window": 17_600,
        "stage1_a14b_360p": 18_480,
    }
    assert settings.segments(gpu_time.latent_frames()) == 7
    assert programs["stage2_csg_window"].model.in_dim == 96  # concat conditioning


def test_scan_undercount_is_corrected_by_layer_extrapolation():
    program = DiTProgram(
        "tiny", _tiny(scan_layers=False, attention_backend="xla"), (5, 8, 8), text_len=8
    )
    unrolled = common.cost_of(common.lower_forward(program))["flops"]
    counted = common.dit_flops(program)
    assert counted["flops"] == pytest.approx(unrolled, rel=1e-6)
    # XLA counts the scanned program's layer body once: far fewer than 3 layers' worth.
    assert counted["scan_reported_flops"] < 0.6 * counted["flops"]
    # matmuls are most of the work, elementwise ops the rest
    assert 0.9 < counted["analytic_flops"] / counted["flops"] <= 1.0


def test_jaxpr_counter_multiplies_loops_and_matches_the_analytic_count():
    w = jnp.ones((16, 16))
    body = lambda x, _: (x @ w, None)
    looped = common.jaxpr_flops(lambda x: jax.lax.scan(body, x, None, length=5)[0], w)
    assert looped == dict(flops=5 * 2 * 16**3, while_loops=0)

    program = DiTProgram("tiny", _tiny(), (5, 8, 8), text_len=8)
    model = WanDiT(program.model)
    counted = common.jaxpr_flops(
        lambda p, x, t, c: model.apply({"params": p}, x, t, c),
        common.abstract_dit_params(program.model),
        *common.abstract_inputs(program),
    )
    assert counted["flops"] == common.analytic_dit_flops(program)


def test_full_size_window_is_counted_without_allocating_weights():
    program = gpu_time.full_2k_programs(gpu_time.ClipSettings())["stage2_csg_window"]
    before = common.peak_rss_bytes()
    counted = common.dit_flops(program)
    # 5B parameters would be 20 GB in fp32: lowering from abstract arrays allocates none.
    assert common.peak_rss_bytes() - before < 2 * 2**30
    assert counted["flops"] == pytest.approx(counted["analytic_flops"], rel=0.02)
    assert 2.5e14 < counted["flops"] < 3.0e14  # ~2.9e14: docs/design.md, "Cost model at 2K"


def test_per_clip_arithmetic_and_predicted_ratios():
    settings = gpu_time.ClipSettings()
    work = {
        "dit:ti2v_5b_2k_end_to_end": 10.0,
        "dit:wan14b_2k_end_to_end": 100.0,
        "dit:stage1_a14b_360p": 3.0,
        "dit:stage2_csg_window": 1.0,
    }
    clip = gpu_time.per_clip(settings, work, seconds_per_flop=0.5)
    swift_dit = 4 * 3.0 + 7 * 8 * 2 * 1.0
    pipes = clip["pipelines"]
    assert pipes["swifti2v"]["dit_flops"] == swift_dit
    assert pipes["ti2v_5b_2k_end_to_end"]["dit_flops"] == 50 * 2 * 10.0
    assert not pipes["swifti2v"]["vae_included"]  # no VAE numbers were given
    ratios = clip["ratios_vs_swifti2v"]
    assert ratios["wan14b_2k_end_to_end"]["flops_ratio_dit_only"] == 40 * 2 * 100.0 / swift_dit
    assert pipes["swifti2v"]["total_seconds"] == pytest.approx(0.5 * swift_dit)

    # a measured forward replaces the FLOP-based prediction for that term only
    measured = gpu_time.per_clip(settings, work, 0.5, {"dit:stage2_csg_window": 2.0})
    assert measured["pipelines"]["swifti2v"]["dit_seconds"] == 0.5 * 12.0 + 112 * 2.0

    vae = {f"vae:{name}": 1.0 for name in gpu_time.VAE_WORK}
    with_vae = gpu_time.per_clip(settings, {**work, **vae}, 0.5)["pipelines"]["swifti2v"]
    assert with_vae["vae_included"] and with_vae["vae_flops"] == 4.0


def test_clip_comparison_reports_both_ratios():
    preset = gpu_time.make_preset("tiny", gpu_time.ClipSettings())
    e2e, win, segs = preset.clip
    assert segs == 3  # 9 latent frames, M=3, N=1
    measured = {e2e: dict(median=3.0, runs=[3.0]), win: dict(median=1.5, runs=[1.5])}
    result = gpu_time.clip_comparison(
        preset, gpu_time.ClipSettings(), measured, {e2e: 12.0, win: 2.0}
    )
    assert result["measured_ratio"] == pytest.approx(3.0 / (3 * 1.5))
    assert result["predicted_ratio_from_xla_flops"] == pytest.approx(2.0)
    assert not result["agree_within_30_percent"]


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="guidance"):
        gpu_time.ClipSettings(stage2_guidance=3)
    with pytest.raises(ValueError, match="stage2_steps"):
        gpu_time.ClipSettings(stage2_steps=0)
    with pytest.raises(ValueError, match="unknown preset"):
        gpu_time.make_preset("huge", gpu_time.ClipSettings())
    with pytest.raises(SystemExit):
        gpu_time.parse_args(["--rounds", "0"])


def test_gpu_time_cli_without_measuring(tmp_path):
    gpu_time.main(["--preset", "tiny", "--no-measure", "--skip-2k", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "results.json").read_text())
    programs = report["preset"]["programs"]
    assert programs["tiny_end_to_end"]["tokens"] == 9 * 16
    assert programs["tiny_csg_window"]["xla"]["flops"] > 0
    assert report["matmul_peak"]["flops_per_second"] > 0
    assert "tiny_end_to_end" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "gpu_time.png").stat().st_size > 0


def test_pytorch_twin_has_the_same_weights():
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    program = gpu_time.make_preset("tiny", gpu_time.ClipSettings()).programs["tiny_csg_window"]
    torch_model, params = gpu_time.diffusers_twin(program.model)
    inputs = common.concrete_inputs(program)
    ours = np.asarray(common.forward_fn(program.model)(params, *inputs))
    ref = gpu_time._torch_forward(torch_model, program, inputs)().permute(0, 2, 3, 4, 1).numpy()
    assert np.max(np.abs(ours - ref)) < 1e-4 * np.max(np.abs(ref))


def test_csg_scaling_worker_and_summary():
    setup = csg_scaling.Setup(dim=32, heads=2, layers=1, latent_hw=(4, 4), text_len=4, steps=2)
    assert [setup.segments(f, "csg") for f in csg_scaling.FRAMES] == [1, 3, 5, 11]
    assert {setup.window_blocks(f, "csg") for f in csg_scaling.FRAMES} == {5}
    result = csg_scaling.worker(dict(setup=dataclasses.asdict(setup), frames=9, mode="csg"))
    assert result["finite"] and result["compilations"] == 1
    assert result["memory_analysis"]["peak"] > 0

    # summarize() on synthetic measurements: flat CSG memory, linear CSG time
    timing, memory = {"timings": {}, "compilations": {"csg": 1}}, {}
    memory["baseline"] = dict(peak_rss_bytes=100)
    flops = {}
    for mode in csg_scaling.MODES:
        for frames in csg_scaling.FRAMES:
            segs = setup.segments(frames, mode)
            tokens = setup.window_blocks(frames, mode)
            timing["timings"][f"{mode}_{frames}"] = dict(median=segs * tokens**1.5, runs=[1.0])
            memory[f"{mode}_{frames}"] = dict(
                memory_analysis=dict(peak=tokens**2, temp=tokens**2),
                peak_rss_bytes=200 + tokens**2,
                compilations=1,
                finite=True,
            )
            flops[f"{mode}_{frames}"] = float(tokens**2)
    summary = csg_scaling.summarize(setup, timing, memory, flops)
    assert summary["ratios"]["csg"]["xla_peak_largest_over_smallest"] == 1.0
    assert summary["ratios"]["end_to_end"]["xla_peak_largest_over_smallest"] == pytest.approx(
        (33 / 5) ** 2
    )
    assert summary["checks"]["csg_memory_flat_xla"]
    assert summary["checks"]["end_to_end_time_grows_faster"]
