"""TPU programs compile (compile-only libtpu devices, no TPU needed): a tiny DiT forward with
splash attention on one chip and a tiny FSDP training step with splash on a v5e 2x2 mesh, so
Mosaic (Pallas) and sharding errors fail CI. Needs the `tpu` extra (CI installs it); without
libtpu these tests fail rather than skip."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.aot import programs, tpu
from configs import stage2
from swifti2v_jax.models import dit
from swifti2v_jax.training import experiment, optim, sharding
from swifti2v_jax.training import state as state_lib
from swifti2v_jax.training import step as step_lib

TARGET = "v5e-4"


@pytest.fixture(scope="module")
def tiny_config():
    config = stage2.get_config("tiny")
    config.model_overrides.attention_backend = "splash"
    config.model_overrides.remat = "full"
    config.mesh.fsdp = True
    return config


def test_tiny_dit_forward_with_splash_compiles_for_tpu(tiny_config):
    model_config = experiment.model_config(tiny_config)
    fn, args = programs._forward(model_config, programs._one_chip(TARGET), 3, (8, 8), 8)
    result = tpu.compile_report(fn, args, tpu.HBM_GB["v5e"])
    assert 0 < result["peak_gb"] < 1 and result["fits"]


def test_tiny_fsdp_train_step_with_splash_compiles_for_tpu(tiny_config):
    config = tiny_config
    model_config = experiment.model_config(config)
    mesh = tpu.mesh(TARGET)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4}
    optimizer = optim.make_optimizer(experiment.optimizer_config(config), 10)
    create = lambda p: state_lib.create_state(p, optimizer, 0, True)
    abstract = jax.eval_shape(create, dit.abstract_params(model_config))
    specs = step_lib.state_specs_for(abstract, mesh, True, config.mesh.fsdp_min_size)
    blocks = jax.tree.leaves(specs.params["blocks"])
    assert sum(sharding.sharded_axis(s) is not None for s in blocks) >= 8  # FSDP is on
    assert all(sharding.sharded_axis(s) != 0 for s in blocks)  # never the layer axis
    state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract,
        sharding.shardings(specs, mesh),
    )
    on_batch = sharding.batch_sharding(mesh)
    b, w, c = 4, 3, model_config.out_dim
    batch = {
        "latents": jax.ShapeDtypeStruct((b, w, 8, 8, c), jnp.float32, sharding=on_batch),
        "reference": jax.ShapeDtypeStruct((b, w, 8, 8, c), jnp.float32, sharding=on_batch),
        "positions": jax.ShapeDtypeStruct((b, w), jnp.int32, sharding=on_batch),
        "is_noisy": jax.ShapeDtypeStruct((b, w), jnp.bool_, sharding=on_batch),
        "context": jax.ShapeDtypeStruct(
            (b, 8, model_config.text_dim), jnp.float32, sharding=on_batch
        ),
    }
    train_step = step_lib.make_train_step(
        model_config=model_config,
        loss_config=experiment.loss_config(config),
        optimizer=optimizer,
        grad_clip=1.0,
        ema_decay=0.99,
        mesh=mesh,
        state_specs=specs,
    )
    result = tpu.compile_report(train_step, (state, batch, {}), tpu.HBM_GB["v5e"])
    assert result["fits"]
    # Each layer's weights are gathered inside the layer loop (not the whole stack up front).
    assert result["collectives"]["all-gather_in_loops"] > 0
    # The donated state is reused for the new state: outputs alias the arguments.
    assert result["alias_gb"] > 0.5 * result["output_gb"]


def test_collectives_reader_finds_loop_bodies():
    hlo = """HloModule m

%body.1 (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %x = f32[4] all-gather(f32[1] %y), dimensions={0}
  %z = bf16[4] all-gather(bf16[1] %y), dimensions={0}
  %f = f32[4] fusion(%x), kind=kLoop, calls=%fused.2
}

%fused.2 (a: f32[4]) -> f32[4] {
  %r = f32[4] all-reduce(f32[4] %a), to_apply=%add
  %s = f32[1] fusion(%a), kind=kCustom, calls=%all-reduce-scatter.3
}

%all-reduce-scatter.3 (a: f32[4]) -> f32[1] {
  %q = f32[4] all-reduce(f32[4] %a), to_apply=%add
}

ENTRY %main (a: f32[1]) -> f32[4] {
  %g = f32[4] all-gather(f32[1] %a), dimensions={0}
  %w = (s32[], f32[4]) while((s32[], f32[4]) %t), condition=%cond, body=%body.1
}
"""
    counts = tpu.collectives(hlo)
    assert counts["all-gather_in_loops"] == 2 and counts["all-gather_outside"] == 1
    assert counts["all-gather_in_loops_bf16"] == 1
    assert counts["all-reduce_in_loops"] == 1 and counts["all-reduce_outside"] == 0
    assert counts["reduce-scatter_in_loops"] == 1  # TPU's all-reduce-scatter fusion


def test_topology_names():
    assert tpu.topology_name("v6e-16") == "v6e:4x4"
    assert tpu.topology_name("v5p:2x2x2") == "v5p:2x2x2"
    with pytest.raises(ValueError, match="no topology"):
        tpu.topology_name("v6e-3")
    assert np.isclose(tpu.HBM_GB["v5e"], 16.0)


def test_tiled_vae_encode_program_lowers_for_one_chip():
    """The tiled 2K encode's per-tile program (benchmarks/aot/single_chip.py) traces and lowers
    with the real Wan2.2 VAE for a TPU chip (tile 4 = 64 pixels here: lowering only)."""
    fn, args, about = programs.vae_encode_tiled(TARGET, tile=4, frames=5)
    params, cache, first, video = args
    assert video.shape == (1, 4, 64, 64, 3) and first.shape == (1, 1, 4, 4, 48)
    assert about["tiled"] and about["latent_hw"] == [4, 4]
    text = fn.lower(*args).as_text()
    assert "while" in text  # the scan over the encoder chunks of the tile
