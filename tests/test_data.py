"""Data: records, synthetic source, video reading, prepare -> ArrayRecord -> grain, tfds builder.

Most tests use cheap stand-in encoders (pooling + a fixed projection; a hashed text embedding)
so they run in seconds; `test_prepare_cli_with_tiny_converted_models` runs the real command
line with a tiny random Wan2.2 VAE and umT5 saved as converted model directories.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from swifti2v_jax.csg import layout as segments
from swifti2v_jax.data import loader, prepare, records, synthetic, videos
from swifti2v_jax.io.video import ffmpeg_subprocess

NUM_FRAMES = 13  # -> 4 latent blocks
SIZE = 32  # -> 2x2 latents with the 16x VAE
Z = 48
TEXT_DIM = 32
TEXT_LEN = 16


def write_video(path: Path, frames: int, height: int = 32, width: int = 48, seed: int = 0):
    import imageio.v2 as imageio

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    writer = imageio.get_writer(str(path), format="FFMPEG", fps=8, macro_block_size=1)
    with ffmpeg_subprocess(), writer:
        for i in range(frames):
            writer.append_data(np.roll(base, 2 * i, axis=1))


def fake_encoders() -> prepare.Encoders:
    projection = np.random.default_rng(0).standard_normal((3, Z)).astype(np.float32)

    def encode_video(video):
        frames = np.asarray(video)[:, ::4]  # causal 4x: frame 0, then one per 4 frames
        b, t, h, w, c = frames.shape
        pooled = frames.reshape(b, t, h // 16, 16, w // 16, 16, c).mean(axis=(3, 5))
        return pooled @ projection

    def encode_text(prompts):
        out = np.zeros((len(prompts), TEXT_LEN, TEXT_DIM), np.float32)
        for row, prompt in enumerate(prompts):
            length = min(len(prompt.split()) + 1, TEXT_LEN)
            rng = np.random.default_rng(zlib.crc32(prompt.encode()))
            out[row, :length] = rng.standard_normal((length, TEXT_DIM))
        return out

    return prepare.Encoders(encode_video, encode_text, temporal_factor=4, spatial_factor=16)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for index, name in enumerate(["a", "b", "c"]):
        write_video(folder / f"{name}.mp4", NUM_FRAMES + index, seed=index)
    (folder / "a.txt").write_text("a red fox runs")
    (folder / "b.txt").write_text("waves\n")  # c has no caption
    write_video(folder / "short.mp4", 6)
    (folder / "broken.mp4").write_bytes(b"\x00\x01 this is not a video" * 10)
    (folder / "notes.md").write_text("not a video, ignored")
    return folder


CLIP = prepare.ClipSpec(num_frames=NUM_FRAMES, height=SIZE, width=SIZE)


def check_report(report: prepare.PrepareReport):
    assert report.written == 3
    assert set(report.skipped) == {"short.mp4", "broken.mp4"}
    assert "too short" in report.skipped["short.mp4"]
    assert "unreadable" in report.skipped["broken.mp4"]
    assert report.missing_captions == ["c.mp4"]


def check_batch(batch: dict, batch_size: int, window: int, text_len: int):
    assert batch["latents"].shape == (batch_size, window, 2, 2, Z)
    assert batch["reference"].shape == (batch_size, window, 2, 2, Z)
    assert batch["latents"].dtype == np.float32
    assert batch["positions"].shape == (batch_size, window)
    assert batch["is_noisy"].shape == (batch_size, window) and batch["is_noisy"].dtype == bool
    assert batch["context"].shape == (batch_size, text_len, TEXT_DIM)
    for positions, is_noisy in zip(batch["positions"], batch["is_noisy"]):
        # Exactly a window of the sampling planner.
        start = int(positions[np.argmax(is_noisy)])
        expected = segments.window_for_start(4, 2, 1, start)
        assert tuple(positions) == expected.blocks
        assert tuple(is_noisy) == expected.is_noisy
    # The hybrid reference: block 0 of z_ref is the anchor latent.
    np.testing.assert_allclose(batch["reference"][:, 0], batch["latents"][:, 0], atol=1e-2)


def test_prepare_then_grain_round_trip(video_dir, tmp_path, capsys):
    out = tmp_path / "prepared"
    report = prepare.prepare(
        video_dir, out, clip_spec=CLIP, encoders=fake_encoders(), records_per_shard=2
    )
    check_report(report)
    # Shards are fixed pairs of videos (data/shards.py): [a, b], [broken, c], [short]; the
    # last one has no usable video, so no file.
    assert sorted(p.name for p in out.iterdir()) == [
        ".shards",
        "dataset.json",
        "prepare_job.json",
        "prepare_report.json",
        "train-00000-of-00003.array_record",
        "train-00001-of-00003.array_record",
    ]
    info = prepare.read_dataset_info(out)
    assert info["num_records"] == 3 and info["latent_shape"] == [4, 2, 2, Z]
    saved_report = json.loads((out / "prepare_report.json").read_text())
    assert set(saved_report["skipped"]) == {"short.mp4", "broken.mp4"}
    assert "skipped broken.mp4: unreadable" in report.summary()

    source = loader.array_record_source(out)
    assert len(source) == 3
    first = records.as_record(source[0])
    assert first["name"] == "a" and first["caption"] == "a red fox runs"
    assert first["latents"].dtype == np.float16 and first["context"].shape == (5, TEXT_DIM)

    spec = loader.WindowSpec(noisy_blocks=2, neighbours=1, text_len=TEXT_LEN)
    data = loader.make_loader(source, batch_size=2, window=spec, seed=0, expected_blocks=4)
    iterator = iter(data)
    batches = [next(iterator) for _ in range(4)]  # crosses epochs (3 records, drop remainder)
    for batch in batches:
        check_batch(batch, 2, 4, TEXT_LEN)
    starts = {int(p[np.argmax(n)]) for b in batches for p, n in zip(b["positions"], b["is_noisy"])}
    assert len(starts) > 1  # random segment starts


def test_grain_iterator_state_resumes_the_stream(video_dir, tmp_path):
    out = tmp_path / "prepared"
    prepare.prepare(video_dir, out, clip_spec=CLIP, encoders=fake_encoders(), dtype="float32")
    source = loader.array_record_source(out)
    spec = loader.WindowSpec(noisy_blocks=2, neighbours=1, text_len=TEXT_LEN)
    make = lambda: iter(loader.make_loader(source, batch_size=1, window=spec, seed=3))
    first = make()
    for _ in range(2):
        next(first)
    state = first.get_state()
    expected = [next(first) for _ in range(3)]
    second = make()
    second.set_state(state)
    for want in expected:
        got = next(second)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_prepare_fails_early_on_bad_input(video_dir, tmp_path):
    encoders = fake_encoders()
    with pytest.raises(ValueError, match="4k\\+1"):
        prepare.prepare(
            video_dir,
            tmp_path / "o1",
            clip_spec=prepare.ClipSpec(12, SIZE, SIZE),
            encoders=encoders,
        )
    with pytest.raises(ValueError, match="multiples of 16"):
        prepare.prepare(
            video_dir, tmp_path / "o2", clip_spec=prepare.ClipSpec(13, 40, SIZE), encoders=encoders
        )
    with pytest.raises(ValueError, match="does not exist"):
        prepare.prepare(tmp_path / "nope", tmp_path / "o3", clip_spec=CLIP, encoders=encoders)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        prepare.prepare(video_dir, tmp_path / "full", clip_spec=CLIP, encoders=encoders)
    empty = tmp_path / "only-broken"
    empty.mkdir()
    (empty / "broken.mp4").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no usable video"):
        prepare.prepare(empty, tmp_path / "o4", clip_spec=CLIP, encoders=encoders)
    assert not list((tmp_path / "o4").glob("*.array_record"))  # nothing half-written
    with pytest.raises(ValueError, match="references"):
        prepare.ReferenceSpec(kind="precomputed", references_dir=str(tmp_path / "missing"))


def test_precomputed_stage1_references(video_dir, tmp_path):
    """Stage I outputs (any size) from --references: resized, frame 0 := the clean frame."""
    refs = tmp_path / "stage1"
    refs.mkdir()
    for index, name in enumerate(["a", "b"]):  # c has no reference: skipped, reported
        write_video(refs / f"{name}.mp4", NUM_FRAMES, height=16, width=24, seed=10 + index)
    out = tmp_path / "prepared"
    reference = prepare.ReferenceSpec(kind="precomputed", references_dir=str(refs))
    report = prepare.prepare(
        video_dir, out, clip_spec=CLIP, encoders=fake_encoders(), reference=reference
    )
    assert report.written == 2 and "no reference video" in report.skipped["c.mp4"]
    record = records.as_record(loader.array_record_source(out)[0])
    latents = record["latents"].astype(np.float32)
    z_ref = record["reference"].astype(np.float32)
    np.testing.assert_allclose(z_ref[0], latents[0], atol=1e-2)
    assert np.abs(z_ref[1:] - latents[1:]).mean() > 0.05


def test_tfds_builder_over_the_same_folder(video_dir, tmp_path):
    from swifti2v_jax.data import tfds_builder

    builder = tfds_builder.VideoFolderBuilder(
        video_dir=video_dir, clip_spec=CLIP, encoders=fake_encoders(), data_dir=str(tmp_path)
    )
    builder.download_and_prepare()
    check_report(builder.report)
    source = builder.as_data_source()["train"]
    assert len(source) == 3
    spec = loader.WindowSpec(noisy_blocks=2, neighbours=1, text_len=TEXT_LEN)
    data = loader.make_loader(source, batch_size=3, window=spec, seed=0, expected_blocks=4)
    check_batch(next(iter(data)), 3, 4, TEXT_LEN)
    # Training reads it back from its folder, without the builder or the encoders.
    from configs import stage2
    from swifti2v_jax.training import experiment

    config = stage2.get_config("tiny")
    config.data.tfds_dir = str(tmp_path / "video_folder_builder" / "1.0.0")
    source, info = experiment.make_source(config)
    assert len(source) == 3 and info.num_blocks == 4 and info.text_dim == TEXT_DIM
    with pytest.raises(ValueError, match="not a prepared tfds dataset"):
        loader.tfds_source(tmp_path)


def test_records_round_trip():
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((3, 2, 2, 4)).astype(np.float32)
    for dtype in records.STORAGE_DTYPES:
        record = records.make_record(latents, latents * 2, latents[0, 0], "a cat", "x", dtype)
        back = records.deserialize(records.serialize(record))
        assert back["caption"] == "a cat" and back["name"] == "x"
        assert back["latents"].dtype == np.dtype(dtype)
        np.testing.assert_allclose(back["reference"], latents * 2, rtol=1e-3)
    with pytest.raises(ValueError, match="storage dtype"):
        records.make_record(latents, latents, latents[0, 0], "", "", "bfloat16")
    with pytest.raises(ValueError, match="same|both"):
        records.make_record(latents, latents[:2], latents[0, 0], "", "", "float32")
    embedding = np.zeros((8, 4), np.float32)
    embedding[:3] = 1.0
    assert records.trim_context(embedding).shape == (3, 4)
    assert records.pad_context(records.trim_context(embedding), 8).shape == (8, 4)
    assert records.trim_context(np.zeros((8, 4))).shape == (1, 4)


def test_synthetic_source_is_deterministic_and_windowed():
    spec = synthetic.SyntheticSpec(num_records=4, num_blocks=5, text_len=6, text_dim=8)
    a, b = synthetic.SyntheticSource(spec), synthetic.SyntheticSource(spec)
    np.testing.assert_array_equal(a[2]["latents"], b[2]["latents"])
    assert not np.array_equal(a[1]["latents"], a[2]["latents"])
    np.testing.assert_array_equal(a[0]["reference"][0], a[0]["latents"][0])
    with pytest.raises(IndexError):
        a[4]
    window = loader.WindowSpec(noisy_blocks=3, neighbours=1, end_to_end=True, text_len=6)
    data = loader.make_loader(a, batch_size=2, window=window, seed=0)
    batch = next(iter(data))
    assert batch["latents"].shape == (2, 5, 4, 4, 48)
    np.testing.assert_array_equal(batch["is_noisy"][0], [False, True, True, True, True])


def test_read_clip_crops_and_resizes(tmp_path):
    write_video(tmp_path / "v.mp4", 9, height=32, width=64)
    clip = videos.read_clip(tmp_path / "v.mp4", 5, 16, 16, frame_stride=2)
    assert clip.shape == (5, 16, 16, 3) and clip.dtype == np.float32
    assert clip.min() >= -1 and clip.max() <= 1
    # every frame fitted by the rule sampling fits its input image with (no train/test skew)
    import imageio.v2 as imageio
    from PIL import Image

    from swifti2v_jax.io import image as image_io

    with imageio.get_reader(str(tmp_path / "v.mp4"), format="ffmpeg") as reader:
        third = reader.get_data(2)
    fitted = image_io.to_array(image_io.crop_resize(Image.fromarray(third), 16, 16))
    np.testing.assert_array_equal(clip[1], fitted)
    with pytest.raises(videos.VideoError, match="too short"):
        videos.read_clip(tmp_path / "v.mp4", 9, 16, 16, frame_stride=2)


def _save_tiny_models(root: Path):
    """A tiny random Wan2.2-layout VAE and umT5 + tokenizer, as converted directories."""
    import jax
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    from swifti2v_jax import checkpoints
    from swifti2v_jax.models import t5, vae
    from swifti2v_jax.presets import t5 as t5_presets
    from swifti2v_jax.presets import vae as vae_presets

    vae_config = vae.as_config(vae_presets.tiny_wan22())
    vae_params = jax.jit(lambda key: vae.init_params(vae_config, key))(jax.random.PRNGKey(0))
    checkpoints.save(root / "vae", "vae", vae_config.to_dict(), vae_params)
    t5_config = t5.T5Config.from_dict(t5_presets.tiny().to_dict())
    t5_params = jax.jit(lambda key: t5.init_params(t5_config, key))(jax.random.PRNGKey(1))
    checkpoints.save(root / "t5", "t5", t5_presets.tiny().to_dict(), t5_params)
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tokenizer.train_from_iterator(["a red fox runs", "waves on the sea"] * 20, trainer)
    (root / "tokenizer").mkdir()
    tokenizer.save(str(root / "tokenizer" / "tokenizer.json"))
    return t5_config.d_model


@pytest.mark.slow
def test_prepare_cli_with_tiny_converted_models(video_dir, tmp_path, capsys):
    """The real command line: tiny random VAE + umT5 from converted directories."""
    d_model = _save_tiny_models(tmp_path)
    out = tmp_path / "prepared"
    code = prepare.main(
        [
            f"--videos={video_dir}",
            f"--out={out}",
            f"--vae={tmp_path / 'vae'}",
            f"--t5={tmp_path / 't5'}",
            "--text-len=16",
            f"--num-frames={NUM_FRAMES}",
            f"--height={SIZE}",
            f"--width={SIZE}",
            "--dtype=float32",
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "prepared 3 clips" in printed.out and "skipped broken.mp4" in printed.out
    source = loader.array_record_source(out)
    record = records.as_record(source[0])
    assert record["latents"].shape == (4, 2, 2, Z)
    assert record["context"].shape[1] == d_model
    assert prepare.main([f"--videos={video_dir}", f"--out={out}", "--vae=x"]) == 2  # not empty


def _records_with_generated(num_records=3, num_blocks=5):
    spec = synthetic.SyntheticSpec(num_records=num_records, num_blocks=num_blocks, text_dim=32)
    source = synthetic.SyntheticSource(spec)
    out = []
    for index in range(num_records):
        record = records.as_record(source[index])
        out.append(records.with_generated(record, -np.asarray(record["latents"])))
    return out


def test_generated_latents_round_trip_and_feed_neighbours():
    record = _records_with_generated(1)[0]
    back = records.deserialize(records.serialize(record))
    np.testing.assert_array_equal(back["generated"], record["generated"])
    assert "generated" not in records.deserialize(
        records.serialize({k: v for k, v in record.items() if k != "generated"})
    )
    with pytest.raises(ValueError, match="generated latents"):
        records.with_generated(record, record["latents"][:2])

    # generated_neighbours=1: the neighbour comes from `generated` (= -latents here); the
    # anchor and the noisy blocks stay true.
    spec = loader.WindowSpec(noisy_blocks=1, neighbours=1, text_len=8, generated_neighbours=1.0)
    rng = np.random.default_rng(0)
    for _ in range(8):
        example = loader.ToWindow(spec).random_map(record, rng)
        truth = np.asarray(record["latents"], np.float32)[example["positions"]]
        sign = np.where(~example["is_noisy"] & (np.arange(3) > 0), -1.0, 1.0)
        np.testing.assert_array_equal(example["latents"], sign[:, None, None, None] * truth)
    never = loader.WindowSpec(noisy_blocks=1, neighbours=1, text_len=8)
    example = loader.ToWindow(never).random_map(record, np.random.default_rng(0))
    np.testing.assert_array_equal(
        example["latents"], np.asarray(record["latents"], np.float32)[example["positions"]]
    )
    without = {k: v for k, v in record.items() if k != "generated"}
    with pytest.raises(ValueError, match="rollout"):
        loader.ToWindow(spec).random_map(without, np.random.default_rng(0))
    with pytest.raises(ValueError, match="generated_neighbours"):
        loader.WindowSpec(generated_neighbours=1.5)


def test_rollout_adds_the_csg_output_of_each_clip(tmp_path, capsys):
    import jax

    from swifti2v_jax import checkpoints
    from swifti2v_jax.data import rollout
    from swifti2v_jax.models.dit import DiTConfig, WanDiT, init_params
    from swifti2v_jax.presets import dit as dit_configs
    from swifti2v_jax.presets import sample as sample_presets
    from swifti2v_jax.sampling.config import pipeline_config as make_pipeline_config

    plain = [{k: v for k, v in r.items() if k != "generated"} for r in _records_with_generated()]
    prepare.write_dataset(
        tmp_path / "data", iter((r["name"], r) for r in plain), prepare.PrepareReport(3)
    )
    model_dict = dit_configs.get("tiny_concat")
    params = init_params(DiTConfig.from_dict(model_dict), jax.random.key(0))
    checkpoints.save(tmp_path / "dit", "dit", model_dict.to_dict(), params)
    argv = ["--data", str(tmp_path / "data"), "--stage2", str(tmp_path / "dit")]
    assert rollout.main(argv + ["--out", str(tmp_path / "out")]) == 0

    written = loader.array_record_source(tmp_path / "out")
    info = prepare.read_dataset_info(tmp_path / "out")
    assert len(written) == 3 and info["rollout"]["preset"] == "demo"
    pipeline_config = make_pipeline_config(sample_presets.get_config("demo"))
    for index in range(3):
        record = records.as_record(written[index])
        np.testing.assert_array_equal(record["generated"][0], record["latents"][0])
        np.testing.assert_array_equal(record["latents"], plain[index]["latents"])
    # A pinned sampler (reproduce.py's rollouts) replaces the preset's, and is recorded.
    assert pipeline_config.stage2.ensemble > 1
    pinned = argv + ["--out", str(tmp_path / "pinned"), "--sigma-start", "0.5", "--ensemble", "1"]
    assert rollout.main(pinned) == 0
    sampler = prepare.read_dataset_info(tmp_path / "pinned")["rollout"]["sampler"]
    assert (sampler["sigma_start"], sampler["ensemble"]) == (0.5, 1)
    other = records.as_record(loader.array_record_source(tmp_path / "pinned")[0])["generated"]
    assert np.abs(other[1:] - records.as_record(written[0])["generated"][1:]).max() > 1e-3
    # Its first CSG window by hand: blocks [anchor 0 | noisy 1, 2] (demo preset: 1 noisy block
    # + 1 neighbour, none generated yet), one Euler step from sigma 0.5 with concat conditioning.
    source = records.as_record(loader.array_record_source(tmp_path / "data")[0])
    z_ref = np.asarray(source["reference"], np.float32)[None, :3]
    key = jax.random.fold_in(jax.random.key(0), 0)  # --seed 0, record 0
    block_noise = [
        jax.random.normal(jax.random.fold_in(key, b), z_ref[:, 0].shape) for b in range(3)
    ]
    noise = np.stack(block_noise, axis=1)  # noise depends on (key, block index) only
    x = np.concatenate([z_ref[:, :1], 0.5 * z_ref[:, 1:] + 0.5 * noise[:, 1:]], axis=1)
    x[:, 0] = np.asarray(source["latents"][0], np.float32)
    context = np.zeros((1, pipeline_config.text_len, 32), np.float32)
    context[0, : len(source["context"])] = source["context"]
    velocity = WanDiT(DiTConfig.from_dict(model_dict)).apply(
        {"params": params}, np.concatenate([x, z_ref], -1), np.array([[0.0, 500.0, 500.0]]),
        context, np.arange(3)[None],
    )  # fmt: skip
    by_hand = x[0, 1:] - 0.5 * np.asarray(velocity)[0, 1:]
    np.testing.assert_allclose(other[1:3], by_hand, atol=2e-3, rtol=2e-3)
    # The output folder is not overwritten by accident; a Stage I-style model is refused.
    assert rollout.main(argv + ["--out", str(tmp_path / "out")]) == 1
    assert "not empty" in capsys.readouterr().err
    assert rollout.main(argv + ["--out", str(tmp_path / "data"), "--overwrite"]) == 1
    assert "must differ" in capsys.readouterr().err
    plain_dict = dit_configs.get("tiny")
    plain_params = init_params(DiTConfig.from_dict(plain_dict), jax.random.key(0))
    checkpoints.save(tmp_path / "plain", "dit", plain_dict.to_dict(), plain_params)
    with pytest.raises(ValueError, match="in_dim"):
        rollout.rollout(tmp_path / "data", tmp_path / "plain", tmp_path / "out2")
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())
