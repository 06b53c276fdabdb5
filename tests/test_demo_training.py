"""The demo's training path: VAE training, train.py's model export, the demo dataset builder,
the reproduce export, and the pieces they rest on (frame-tap convolutions, traced VAE)."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from configs import stage2 as stage2_configs
from configs.demo import vae as demo_vae_config
from swifti2v_jax import checkpoints
from swifti2v_jax.csg import reference
from swifti2v_jax.data import loader, photos, procedural, records
from swifti2v_jax.demo import build as demo_build
from swifti2v_jax.demo import dataset as demo_dataset
from swifti2v_jax.demo import reproduce
from swifti2v_jax.models import vae
from swifti2v_jax.models.dit import DiTConfig
from swifti2v_jax.models.vae_blocks import CONV3D, conv3d_as_frame_taps
from swifti2v_jax.presets import vae as vae_configs
from swifti2v_jax.training import experiment


@pytest.mark.parametrize("strides, padding", [((1, 1), ((1, 1), (1, 1))), ((2, 2), "VALID")])
def test_frame_taps_equal_a_3d_convolution_and_its_gradient(strides, padding):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 9, 10, 5))
    k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 5, 7)) * 0.2
    b = jax.random.normal(jax.random.PRNGKey(2), (7,))
    pad3d = padding if padding == "VALID" else ((0, 0), *padding)

    def direct(x, k):
        y = lax.conv_general_dilated(x, k, (1, *strides), pad3d, dimension_numbers=CONV3D)
        return y + b

    def taps(x, k):
        return conv3d_as_frame_taps(x, k, b, strides, padding)

    np.testing.assert_allclose(taps(x, k), direct(x, k), atol=2e-5)
    loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
    for g_taps, g_direct in zip(
        jax.grad(loss(taps), (0, 1))(x, k), jax.grad(loss(direct), (0, 1))(x, k)
    ):
        np.testing.assert_allclose(g_taps, g_direct, atol=5e-5)


@pytest.mark.slow  # 71 s; run with -m slow when touching the demo VAE
def test_traced_encode_decode_equal_the_chunked_programs():
    config = vae.as_config(vae_configs.get("tiny_wan22"))
    params = vae.init_params(config, jax.random.PRNGKey(0))
    video = jax.random.uniform(jax.random.PRNGKey(1), (1, 9, 32, 32, 3), minval=-1, maxval=1)
    latents = vae.encode(params, config, video)
    np.testing.assert_allclose(vae.encode_frames(params, config, video), latents, atol=1e-5)
    np.testing.assert_allclose(
        vae.decode_frames(params, config, latents), vae.decode(params, config, latents), atol=1e-5
    )


def test_vae_training_graph_is_the_inference_vae_and_decoder_phase_freezes_the_encoder():
    """The demo VAE's training graph (unrolled encode_frames / decode_frames, what
    vae_training's loss runs) equals the inference VAE (scanned, cached encode / decode) on
    the architecture configs/demo/vae.py trains, at tiny widths; one decoder-only step
    (train='decoder') leaves the encoder and quant_conv bit for bit, weight decay included,
    and moves the decoder."""
    import optax

    from swifti2v_jax.training import state as state_lib
    from swifti2v_jax.training import vae_training

    config = vae_training.vae_config_from(_tiny_vae_config())
    rng = np.random.default_rng(0)  # random params of the right shapes, without init's compile

    def random_leaf(leaf):
        if len(leaf.shape) == 1:  # biases and norm scales
            return (1.0 + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        fan_in = np.prod(leaf.shape[:-1])
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    params = jax.tree.map(random_leaf, vae.abstract_params(config))
    video = jax.random.uniform(jax.random.PRNGKey(1), (1, 2, 8, 16, 3), minval=-1, maxval=1)
    latents = vae.encode(params, config, video)
    np.testing.assert_allclose(vae.encode_frames(params, config, video), latents, atol=1e-5)
    np.testing.assert_allclose(
        vae.decode_frames(params, config, latents), vae.decode(params, config, latents), atol=1e-5
    )

    loss_config = vae_training.VAELossConfig()
    optimizer = optax.adamw(1e-3, weight_decay=0.1)
    mask = vae_training.trainable_mask(params, "decoder")
    step = vae_training.make_train_step(config, loss_config, optimizer, 1.0, 0.0, mask)
    before = jax.tree.map(np.array, params)
    state, step_metrics = step(state_lib.create_state(params, optimizer, 0, False), video)
    recon = vae.decode(before, config, vae.encode(before, config, video))
    expected = (
        np.mean(np.abs(recon - video)) + np.mean(np.square(recon - video))
        + loss_config.latent_weight * np.mean(np.square(latents))
    )  # fmt: skip
    np.testing.assert_allclose(float(step_metrics["loss"]), expected, rtol=1e-5)
    for part in ("encoder", "quant_conv"):
        jax.tree.map(
            np.testing.assert_array_equal, jax.device_get(state.params[part]), before[part]
        )
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                         state.params["decoder"], before["decoder"])  # fmt: skip
    assert min(jax.tree.leaves(moved)) > 0


def _tiny_vae_config():
    config = demo_vae_config.get_config()
    config.vae.update(base_dim=8, dec_dim=8, z_dim=8)
    config.data.update(
        num_clips=2, frames=5, height=64, width=128, clip_frames=3, crop_height=16, crop_width=32
    )
    config.batch_size = 2
    config.num_steps = 4
    config.log_every = 2
    config.checkpoint.every = 2
    config.optimizer.warmup_steps = 1
    return config


def test_vae_training_runs_resumes_and_exports_normalised_latents(tmp_path):
    from swifti2v_jax.training import vae_training

    config = _tiny_vae_config()
    config.num_steps = 2
    assert vae_training.train(config, tmp_path) == 2
    assert (tmp_path / "model").is_dir()  # a finished run exports
    shutil.rmtree(tmp_path / "model")
    config.num_steps = 4  # resumes from the step-2 checkpoint and finishes
    assert vae_training.train(config, tmp_path) == 4
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged] == [2, 4]
    assert all(np.isfinite(entry["loss"]) for entry in logged)

    fields, params = checkpoints.load(tmp_path / "model", kind="vae")
    exported = vae.as_config(fields)
    assert exported.z_dim == 8 and exported.spatial_factor == 4
    # The export normalises with statistics of its own clips: on those, per-channel mean 0
    # and std 1 (up to the fp32 encode).
    data = vae_training.VAEDataConfig(**config.data.to_dict())
    high, _ = vae_training.render_pool(data)
    z = np.asarray(vae.encode(params, exported, high.astype(np.float32) / 127.5 - 1.0))
    z = z.reshape(-1, exported.z_dim)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-3)


@pytest.mark.slow  # 25 s; the shared loop is covered by the VAE resume test
def test_decoder_only_phase_keeps_the_encoder_and_its_latent_statistics(tmp_path):
    from swifti2v_jax.training import vae_training

    config = _tiny_vae_config()
    config.num_steps = 2
    vae_training.train(config, tmp_path / "first")
    first_fields, first = checkpoints.load(tmp_path / "first" / "model", kind="vae")
    config.train = "decoder"
    config.init_checkpoint = ""
    with pytest.raises(ValueError, match="init_checkpoint"):
        vae_training.train(config, tmp_path / "second")
    config.init_checkpoint = str(tmp_path / "first" / "model")
    config.data.photo_clips = 1  # another pool: its latents would measure other statistics
    vae_training.train(config, tmp_path / "second")
    fields, second = checkpoints.load(tmp_path / "second" / "model", kind="vae")
    for part in ("encoder", "quant_conv"):
        for a, b in zip(jax.tree.leaves(first[part]), jax.tree.leaves(second[part])):
            np.testing.assert_array_equal(a, b)
    moved = [
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(first["decoder"]), jax.tree.leaves(second["decoder"]))
    ]
    assert max(moved) > 0
    np.testing.assert_array_equal(fields["latents_mean"], first_fields["latents_mean"])
    np.testing.assert_array_equal(fields["latents_std"], first_fields["latents_std"])


def test_vae_data_config_errors():
    from swifti2v_jax.training import vae_training

    config = _tiny_vae_config()
    architecture = vae_training.vae_config_from(config)
    bad = vae_training.VAEDataConfig(**{**config.data.to_dict(), "clip_frames": 7})
    with pytest.raises(ValueError, match="<= frames"):
        bad.validate(architecture)
    bad = vae_training.VAEDataConfig(**{**config.data.to_dict(), "height": 72})
    with pytest.raises(ValueError, match="multiple of 16"):
        bad.validate(architecture)
    bad = vae_training.VAEDataConfig(**{**config.data.to_dict(), "crop_width": 64})
    with pytest.raises(ValueError, match="fit the low-res"):
        bad.validate(architecture)
    bad = vae_training.VAEDataConfig(**{**config.data.to_dict(), "photo_clips": -1})
    with pytest.raises(ValueError, match="photo_clips"):
        bad.validate(architecture)


def test_vae_pool_adds_training_photographs_after_the_procedural_clips():
    from swifti2v_jax.data import photos, procedural
    from swifti2v_jax.training import vae_training

    data = vae_training.VAEDataConfig(
        **{**_tiny_vae_config().data.to_dict(), "photo_clips": 1, "first_seed": 5}
    )
    high, low = vae_training.render_pool(data)
    assert high.shape[0] == low.shape[0] == 3
    hi, lo = photos.render_pair(5, data.frames, data.height, data.width, data.factor)
    np.testing.assert_array_equal(high[2], procedural.to_uint8(hi))
    np.testing.assert_array_equal(low[2], procedural.to_uint8(lo))
    hi, _ = procedural.render_pair(6, data.frames, data.height, data.width, data.factor)
    np.testing.assert_array_equal(high[1], procedural.to_uint8(hi))


@pytest.mark.smoke
def test_train_py_exports_the_ema_model(tmp_path):
    from swifti2v_jax.training.dit_training import train

    config = stage2_configs.get_config("tiny")
    config.num_steps = 3
    config.checkpoint.every = 3
    config.log_every = 3
    assert train(config, tmp_path) == 3
    fields, params = checkpoints.load(tmp_path / "model", kind="dit")
    assert DiTConfig.from_dict(fields).in_dim == 96
    meta = checkpoints.read_metadata(tmp_path / "model")
    assert meta["trained_steps"] == 3
    # the sampling contract beside the model config (csg/contract.py); synthetic data has no
    # recorded VAE normalisation
    assert meta["trained_with"] == dict(
        conditioning="concat", noisy_blocks=config.csg.noisy_blocks,
        neighbours=config.csg.neighbours, end_to_end=False, text_len=config.text_len,
        latents_mean=None, latents_std=None,
    )  # fmt: skip
    # The export is the EMA of the final state (the tiny preset keeps an EMA).
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(tmp_path / "checkpoints", item_names=("state", "data"))
    restored = manager.restore(3, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    ema = restored["state"]["ema_params"]
    for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "name", ["stage2_neighbours", "stage2_rollout", "stage2_photos", "stage2_refs"]
)
def test_demo_stage2_fine_tunes_fail_early_without_their_inputs(name, tmp_path):
    """The fine-tune phases need an init checkpoint; the rollout phase also needs records
    with generated latents (the synthetic source has none)."""
    import importlib

    from swifti2v_jax.training.dit_training import train

    config = importlib.import_module(f"configs.demo.{name}").get_config()
    with pytest.raises(ValueError, match="init_checkpoint"):
        train(config, tmp_path / "a")
    config.allow_random_init = True
    config.model = "tiny_concat"
    config.data.synthetic = stage2_configs.get_config("tiny").data.synthetic
    config.text_len = 8
    config.num_steps = 1
    config.batch_size = 2
    if config.csg.generated_neighbours > 0:
        with pytest.raises(ValueError, match="rollout"):
            train(config, tmp_path / "b")
    else:
        assert train(config, tmp_path / "b") == 1


@pytest.mark.parametrize("name", ["stage1_photos", "stage1_refine"])
def test_demo_stage1_fine_tunes_are_continuation_fine_tunes(name, tmp_path):
    import importlib

    from swifti2v_jax.training.dit_training import train

    config = importlib.import_module(f"configs.demo.{name}").get_config()
    assert config.loss.max_clean_frames == 3 and config.stage == "stage1"
    assert (config.loss.leading_weight > 1) == (name == "stage1_refine")
    with pytest.raises(ValueError, match="init_checkpoint"):
        train(config, tmp_path / "a")


def test_demo_dataset_records_follow_the_sampling_reference(tmp_path):
    demo_build.build(tmp_path / "random", stage1="ti2v")
    out = tmp_path / "data"
    reports = demo_dataset.build(
        tmp_path / "random" / "vae", tmp_path / "random", out, num_clips=2, first_seed=7,
        frames=5, height=64, width=128, factor=4, dtype="float32", progress=False,
        photo_clips=1,
    )  # fmt: skip
    assert reports["stage2"].written == 3 and reports["stage1"].written == 3
    vae_config, vae_params = checkpoints.load(tmp_path / "random" / "vae", kind="vae")
    vae_config = vae.as_config(vae_config)
    source = loader.array_record_source(out / "stage2")
    record = records.as_record(source[1])
    high, low = procedural.render_pair(8, 5, 64, 128, 4)
    np.testing.assert_allclose(
        record["latents"], vae.encode(vae_params, vae_config, high[None])[0], atol=1e-5
    )
    decoded = vae.decode(vae_params, vae_config, vae.encode(vae_params, vae_config, low[None]))
    z_ref = reference.encode_hybrid_reference(vae_params, vae_config, decoded, high[None, 0])
    np.testing.assert_allclose(record["reference"], z_ref[0], atol=1e-5)
    # a causal VAE: block 0 of z_ref is the input image's own latent
    np.testing.assert_allclose(record["reference"][0], record["latents"][0], atol=1e-5)
    assert record["caption"] == demo_dataset.caption(8)
    low_record = records.as_record(loader.array_record_source(out / "stage1")[1])
    np.testing.assert_allclose(
        low_record["latents"], vae.encode(vae_params, vae_config, low[None])[0], atol=1e-5
    )
    # the photograph clip (training photos only) after the procedural ones
    photo_record = records.as_record(source[2])
    photo_high, _ = photos.render_pair(7, 5, 64, 128, 4, split="train")
    np.testing.assert_allclose(
        photo_record["latents"], vae.encode(vae_params, vae_config, photo_high[None])[0], atol=1e-5
    )
    assert photo_record["caption"].startswith("a photograph")
    info = json.loads((out / "stage1" / "dataset.json").read_text())
    assert info["num_records"] == 3 and info["procedural"]["height"] == 16
    # the VAE's normalisation, which training copies into the model's contract
    assert info["latent_statistics"]["latents_std"] == list(vae_config.latents_std)
    config = stage2_configs.get_config("tiny")
    config.data.path = str(out / "stage2")
    _, data_info = experiment.make_source(config)
    assert experiment.trained_with(config, data_info).latents_mean == tuple(vae_config.latents_mean)
    with pytest.raises(ValueError, match="not empty"):
        demo_dataset.build(
            tmp_path / "random" / "vae", tmp_path / "random", out, num_clips=1, frames=5,
            height=64, width=128, progress=False,
        )  # fmt: skip


def test_demo_dataset_stage1_references_are_what_stage1_makes(tmp_path):
    """--stage1-references: the Stage II reference is built from the Stage I model's video of
    the clip (first low-res frame + caption), the same video for the same clip; the Stage I
    records and the Stage II targets do not change."""
    demo_build.build(tmp_path / "random", stage1="ti2v")
    root = tmp_path / "random"
    kwargs = dict(
        num_clips=1, first_seed=3, frames=5, height=64, width=128, factor=2, dtype="float32",
        progress=False,
    )  # fmt: skip
    demo_dataset.build(root / "vae", root, tmp_path / "true", **kwargs)
    demo_dataset.build(
        root / "vae", root, tmp_path / "s1", stage1_references=root / "dit", **kwargs
    )
    read = lambda d, stage: records.as_record(loader.array_record_source(tmp_path / d / stage)[0])
    true, made = read("true", "stage2"), read("s1", "stage2")
    np.testing.assert_array_equal(made["latents"], true["latents"])
    low_true, low_made = read("true", "stage1"), read("s1", "stage1")
    np.testing.assert_array_equal(low_made["latents"], low_true["latents"])
    vae_config, vae_params = checkpoints.load(root / "vae", kind="vae")
    vae_config = vae.as_config(vae_config)
    high, low = procedural.render_pair(3, 5, 64, 128, 2)
    videos = demo_dataset.Stage1Videos(root / "dit", vae_params, vae_config)
    assert not videos.sampler.stage1.input_residual  # Stage I's raw video, as phase 5 trained on
    video = videos(low, np.asarray(made["context"], np.float32), made["name"])
    assert video.shape == (1, 5, 32, 64, 3)
    z_ref = reference.encode_hybrid_reference(vae_params, vae_config, video, high[None, 0])
    np.testing.assert_allclose(made["reference"], z_ref[0], atol=1e-5)
    assert np.abs(made["reference"][1:] - true["reference"][1:]).mean() > 1e-3
    np.testing.assert_allclose(made["reference"][0], true["reference"][0], atol=1e-5)
    info = json.loads((tmp_path / "s1" / "stage2" / "dataset.json").read_text())
    assert info["procedural"]["stage1_references"] == str(root / "dit")


def test_captions_name_the_pan_direction():
    for seed in range(6):
        pan = procedural.random_scene(seed).pan[0]
        assert demo_dataset.caption(seed).endswith("right" if pan > 0 else "left")


def test_reproduce_export_is_all_or_nothing(tmp_path):
    work = tmp_path / "work"
    with pytest.raises(ValueError, match="missing"):
        reproduce.export(work, tmp_path / "weights", {})
    for sub, _ in reproduce.COMPONENTS.values():
        (work / sub).mkdir(parents=True)
        (work / sub / "config.json").write_text(sub)
    out = reproduce.export(work, tmp_path / "weights", {"vae": {"seconds": 1.0}})
    assert sorted(p.name for p in out.iterdir()) == sorted([*reproduce.COMPONENTS, "DEMO.json"])
    # the last Stage II phase is what ships as stage2/
    assert (out / "stage2" / "config.json").read_text() == "stage2_refs/model"
    assert (out / "dit" / "config.json").read_text() == "stage1_refine/model"
    assert json.loads((out / "DEMO.json").read_text())["steps"]["vae"]["seconds"] == 1.0
