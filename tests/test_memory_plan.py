"""The whole-run memory plan (sampling/memory_plan.py): `sample.py --plan`, the check a run
makes before loading weights, and the plan's figures against the objects the run builds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from swifti2v_jax.demo import build as demo_build
from swifti2v_jax.models import vae
from swifti2v_jax.presets import vae as vae_configs
from swifti2v_jax.sampling import memory_plan

SAMPLE = Path(__file__).resolve().parents[1] / "sample.py"
pytestmark = pytest.mark.filterwarnings("ignore:os.fork")


def _sample(cache: Path, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, SWIFTI2V_JAX_CACHE=str(cache), JAX_PLATFORMS="cpu")
    command = [sys.executable, str(SAMPLE), "--config.progress=False", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    return root, demo_build.build(root / "models", stage1="ti2v")


def test_plan_prints_writes_json_and_refuses_over_budget(models):
    root, demo = models
    out = root / "plan.json"
    run = _sample(root / "cache", "--checkpoints", demo, "--plan", "--json", out)
    assert run.returncode == 0, run.stderr[-2000:]
    plan = json.loads(out.read_text())
    assert plan["target"] == "local"
    names = [p["name"] for p in plan["phases"]]
    assert names[0] == "text encode (umT5)" and names[-1] == "decode"
    for key in ("device_peak_bytes", "host_peak_bytes", "transfer_bytes"):
        assert plan[key] > 0
    assert plan["device_peak_bytes"] == max(p["device_bytes"] for p in plan["phases"])
    assert "device peak" in run.stdout
    # over a budget: one line naming the phase and the excess, exit status 1
    over = _sample(
        root / "cache", "--checkpoints", demo, "--plan", "--plan-target", "gpu-24gb",
        "--config.memory.host_budget_gb=0.001",
    )  # fmt: skip
    assert over.returncode == 1
    last = over.stderr.strip().splitlines()[-1]
    assert last.startswith("sample.py: error: the run does not fit gpu-24gb: host memory in ")
    assert "over the 0.00 GB budget" in last


def test_a_run_over_its_budget_stops_before_loading_weights(models):
    root, demo = models
    broken = root / "no_weights"
    shutil.copytree(demo, broken)
    for params in broken.glob("*/params"):  # config files stay: a run that loads fails
        shutil.rmtree(params)
        params.mkdir()
    output = root / "never.mp4"
    args = ("--checkpoints", broken, "--output", output)  # the sizes planned above
    run = _sample(root / "cache", *args, "--config.memory.device_budget_gb=0.0001")
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert "the run does not fit local: device memory in phase" in lines[-1]
    assert not output.exists()
    # the same run without the budget gets as far as loading (and fails there)
    loads = _sample(root / "cache", *args)
    assert loads.returncode != 0 and "does not fit" not in loads.stderr
    assert not output.exists()


def test_plan_cache_sizes_are_the_streams_caches():
    """The plan's per-tile cache bytes are those of the cache the streaming coders build."""
    config = vae.as_config(vae_configs.get("tiny_wan22"))
    params = vae.init_params(config, jax.random.key(0))
    latent_hw, s = (6, 8), vae.spatial_factor(config)
    decode = memory_plan._vae_stream(
        config, params, vae._decode_step, latent_hw, (4, 1), 1, s, True, False, "bfloat16"
    )
    encode = memory_plan._vae_stream(
        config, params, vae._encode_step, latent_hw, (4, 2), s, 1, True, False, "float32"
    )
    decoder = vae.StreamingDecoder(params, config, tile_size=4, tile_overlap=1)
    decoder.push(np.zeros((1, 2, *latent_hw, config.z_dim), np.float32))
    assert decode.tiles == len(decoder._cache) == 6  # 2 x 3 tiles
    assert decode.cache == vae.cache_bytes(decoder._cache[0])
    assert decode.host(carried=True) == 6 * decode.cache // 2  # bfloat16 carried caches
    encoder = vae.StreamingEncoder(params, config, tile_size=4, tile_overlap=2)
    encoder.push(np.zeros((1, 5, latent_hw[0] * s, latent_hw[1] * s, 3), np.float32))
    assert encode.tiles == len(encoder._cache)
    assert encode.cache == vae.cache_bytes(encoder._cache[0])
    assert encode.host(carried=False) == 0 and encode.device_others == 0


def test_local_runtime_is_this_process_with_the_run_programs_compiled(monkeypatch):
    """The local plan's host rows carry this process's RSS measured after compiling the
    run's programs (a remote target: the stated constant)."""
    from swifti2v_jax.presets import sample as sample_presets
    from swifti2v_jax.run_plan import plan_inputs

    specs, config, sizes = plan_inputs(sample_presets.get_config("demo"))
    compiled = []
    measured = memory_plan.local_runtime_bytes

    def spy(programs):
        compiled.extend(p.name for p in programs)
        before = memory_plan.process_rss()
        rss = measured(programs)
        assert rss >= before * 0.9  # the same process, executables alive when measured
        spy.rss = rss
        return rss

    monkeypatch.setattr(memory_plan, "local_runtime_bytes", spy)
    plan = memory_plan.whole_run(
        specs, config, sizes, "local", compile_missing=False, measure_runtime=True
    )
    assert "stage2_window" in compiled and "stage1_dit_chunk" in compiled
    assert all(p.host["runtime"] == spy.rss for p in plan.phases)
    assert plan.host_peak[0] >= spy.rss
    # a run's own check measures the process as it is, compiling nothing twice
    compiled.clear()
    memory_plan.whole_run(specs, config, sizes, "local", compile_missing=False)
    assert compiled == []
    remote = memory_plan.whole_run(specs, config, sizes, "gpu-24gb", compile_missing=False)
    assert all(p.host["runtime"] == memory_plan.RUNTIME_BYTES for p in remote.phases)


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset, target", [("swifti2v_2k_24gb", "gpu-24gb"), ("swifti2v_2k_16gb", "v5e-1")]
)
def test_workstation_presets_fit_their_targets(preset, target):
    """The acceptance figures (docs/memory.md): XLA:CPU figures for programs not yet
    compiled for the TPU (the shipped table holds the compiled ones)."""
    from swifti2v_jax.presets import sample as sample_presets
    from swifti2v_jax.sampling.config import pipeline_config
    from swifti2v_jax.sampling.models import public_specs
    from swifti2v_jax.sampling.plan import plan_sizes

    raw = sample_presets.get_config(preset)
    config = pipeline_config(raw)
    specs = public_specs(config)
    sizes = plan_sizes(specs, config, 2560, 1408, 81)
    plan = memory_plan.whole_run(specs, config, sizes, target, compile_missing=False)
    plan.check()
    assert plan.host_peak[0] <= 48e9
    if preset.endswith("24gb"):
        assert plan.device_peak[0] <= 22e9 and plan.transfer_bytes <= 200e9
    else:
        assert plan.device_peak[0] <= 15e9
