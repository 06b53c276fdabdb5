"""benchmarks/gpu_check.sh --dry-run: every section of the GPU check on CPU with tiny shapes;
the pieces it is built from (weights handed to PyTorch, compile accounting, arguments)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

from benchmarks import common, gpu_check
from benchmarks import gpu_check_pipeline as pipeline_check
from benchmarks import gpu_check_torch as torch_check
from conversion import dit as dit_conversion
from conversion.common import DictSource
from swifti2v_jax.models.dit import abstract_params
from swifti2v_jax.presets import dit as dit_presets
from swifti2v_jax.sampling.clock import CompileMeter, StageClock

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        ["bash", str(SCRIPT), str(out), "--dry-run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), done.stdout, out


def test_dry_run_reaches_every_section_and_prints_them(dry_run):
    report, stdout, out = dry_run
    assert report["dry_run"] is True and not report["notes"]
    for name in gpu_check.SECTIONS:
        assert report.get(name) is not None, name
        assert f"## {gpu_check.TITLES[name]}" in stdout  # the headings real mode prints
    assert (out / "results.md").read_text().strip() in stdout
    assert report["device"]["jax_version"] == jax.__version__


def test_dry_run_forwards_are_the_pipelines_shapes_and_mfu_is_their_flops(dry_run):
    report = dry_run[0]
    run = pipeline_check.prepare(gpu_check.dit_config(True), dry_run=True)
    programs = gpu_check.forward_programs(run)
    rows = report["forwards"]
    assert set(rows) == {f"{p}/{f}" for p in programs for f in gpu_check.DEFAULT_FORMATS}
    peak = report["matmul_peak"]["measured"]
    for row in rows.values():
        program = programs[row["program"]]
        assert row["tokens"] == program.tokens
        assert row["flops"] == common.analytic_dit_flops(program)
        assert row["mfu"] == pytest.approx(row["flops"] / row["seconds"] / peak)
    assert programs["window"].latent_grid[0] == run.plan.windows[0].size
    assert programs["end_to_end"].latent_grid[0] == run.plan.latent_frames
    # int8 stores the block kernels in one byte: fewer weight bytes than bf16.
    assert rows["window/int8"]["weights_gb"] < rows["window/bf16"]["weights_gb"]


def test_dry_run_pytorch_twin_matches_the_jax_forward(dry_run):
    torch_section = dry_run[0]["pytorch"]
    pytest.importorskip("diffusers")
    assert torch_section["implementation"] == "diffusers WanTransformer3DModel"
    assert set(torch_section["forwards"]) == {"window", "end_to_end"}
    for row in torch_section["forwards"].values():
        # fp32 on both sides: the same weights, so parity to float rounding
        assert row["relative"] < 1e-4, row
        assert row["max_abs_reference"] > 0.1


def test_dry_run_pipeline_accounts_compile_and_run_per_stage(dry_run):
    report = dry_run[0]
    pipeline, per_clip = report["pipeline"], report["per_clip"]
    run = pipeline_check.prepare(gpu_check.dit_config(True), dry_run=True)
    assert pipeline["segments"] == run.plan.segments and pipeline["stage2_compilations"] == 1
    assert pipeline["compilations"] > 0 and pipeline["peak_memory_bytes"] > 0
    for stage in pipeline["stages"].values():
        assert stage["run_seconds"] >= 0 and stage["compile_seconds"] >= 0
    assert pipeline["stages"]["stage2"]["compile_seconds"] > 0  # the window program's compile
    forwards = pipeline_check.dit_forwards(run, pipeline)
    assert pipeline["dit_forwards"] == {k: n for k, (n, _) in forwards.items()}
    flops = sum(n * common.analytic_dit_flops(p) for n, p in forwards.values())
    assert pipeline["dit_flops"] == flops and forwards["stage2"][0] > 0
    total = pipeline["stages"]["total"]
    assert per_clip["run_seconds"] == total["run_seconds"]
    assert per_clip["over_paper"] == pytest.approx(total["run_seconds"] / 111.0)
    peak = report["matmul_peak"]["measured"]
    assert per_clip["dit_mfu"] == pytest.approx(pipeline["dit_flops"] / total["run_seconds"] / peak)


def test_weights_handed_to_pytorch_convert_back_exactly():
    """torch_state_dict inverts conversion/dit.py: converting its output again gives the same
    parameters bit for bit (every key, layout and layer index)."""
    pytest.importorskip("torch")
    config = dit_presets.config("tiny")
    params = common.random_params(config, seed=3)  # host-made: nothing to compile
    state = torch_check.torch_state_dict(params, config)
    assert set(state) == set(dit_conversion.expected_shapes(config))
    for name, shape in dit_conversion.expected_shapes(config).items():
        assert tuple(state[name].shape) == shape, name
    tensors = {name: tensor.numpy() for name, tensor in state.items()}
    back = dit_conversion.convert_source(DictSource(tensors), config)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=jax.tree_util.keystr(path))


def test_compile_meter_counts_compilations_of_the_open_stage():
    clock = StageClock()
    with CompileMeter(clock) as meter:
        with clock("stage2"):
            jax.jit(lambda x: x * 3 + 1)(np.arange(7.0)).block_until_ready()
    after = meter.compilations.copy()
    jax.jit(lambda x: x - 5)(np.arange(3.0)).block_until_ready()  # not metered any more
    assert after == meter.compilations and meter.compilations["stage2"] == 1
    assert meter.seconds["stage2"] > 0


def test_partial_report_keeps_every_heading():
    text = gpu_check.markdown(dict(dry_run=False, notes=["end-to-end forwards skipped"]))
    for name in gpu_check.SECTIONS:
        assert f"## {gpu_check.TITLES[name]}\n\nnot reached in this run" in text
    assert "- end-to-end forwards skipped" in text
    assert gpu_check.fits(10.0, 10.0) and not gpu_check.fits(10.5, 10.0)


def test_refuses_cpu_without_dry_run_and_bad_arguments(tmp_path):
    with pytest.raises(SystemExit, match="no GPU"):
        gpu_check.Check(tmp_path, False, 1, ["bf16"], 60.0, None, False).run()
    for bad in (["--formats", "int4"], ["--formats", "int8"], ["--rounds", "0"]):
        with pytest.raises(SystemExit):
            gpu_check.main([str(tmp_path), *bad])
    with pytest.raises(SystemExit, match="no wan/modules/model.py"):
        gpu_check.main([str(tmp_path), "--wan-code", str(tmp_path)])
    for args, message in [
        ([], "usage"),
        ([str(tmp_path), "--fast"], "usage"),
        ([str(tmp_path), "--wheels", str(tmp_path)], "--wheels goes with --installed"),
        ([str(tmp_path), "--installed", "--wheels", str(tmp_path / "nope")], "not a folder"),
    ]:
        done = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)


OFFICIAL = ROOT / ".official" / "Wan2.2"


@pytest.mark.skipif(not (OFFICIAL / "wan").is_dir(), reason="no Wan2.2 clone in .official/")
def test_official_wan22_model_matches_on_the_same_weights():
    """With a clone of the official code (benchmarks/gpu_check.sh --wan-code puts it there):
    its WanModel on the weights handed over by torch_state_dict equals our forward (fp32 CPU,
    SDPA in place of flash-attn). Measured here: relative difference 1.0e-6."""
    pytest.importorskip("diffusers")
    config = gpu_check.dit_config(True)
    params = pipeline_check.random_tree(abstract_params(config))
    run = pipeline_check.prepare(config, dry_run=True)
    program = gpu_check.forward_programs(run)["window"]
    inputs = common.concrete_inputs(program)
    ours = np.asarray(common.forward_fn(config)(params, *inputs))
    twin = torch_check.TorchTwin(config, params, "cpu", OFFICIAL)
    assert twin.implementation.startswith("official Wan2.2")
    reference = twin.forward(program, inputs)().numpy()
    assert gpu_check.compare(ours, reference)["relative"] < 1e-4
