"""Wan2.2 / Wan2.1 VAEs: diffusers AutoencoderKLWan parity, causality, streaming, tiling, errors."""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conversion.vae import params_from_source
from swifti2v_jax.csg import reference as reference_lib
from swifti2v_jax.models import vae, vae_tiling
from swifti2v_jax.presets import vae as vae_configs

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# Pixel sizes: latent 2x3 for both variants (non-square catches H/W mix-ups).
SIZES = {"wan22": (32, 48), "wan21": (16, 24)}


def diffusers_kwargs(config: vae.VAEConfig) -> dict:
    return dict(
        base_dim=config.base_dim,
        decoder_base_dim=config.dec_dim,
        z_dim=config.z_dim,
        dim_mult=list(config.dim_mult),
        num_res_blocks=config.num_res_blocks,
        temperal_downsample=list(config.temporal_downsample),
        is_residual=config.variant == "wan22",
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        patch_size=config.patch_size if config.patch_size > 1 else None,
        scale_factor_spatial=vae.spatial_factor(config),
        latents_mean=list(config.latents_mean),
        latents_std=list(config.latents_std),
    )


@functools.cache
def build_reference(variant: str, seed: int = 0):
    """A tiny diffusers AutoencoderKLWan with non-trivial norms/biases, and its converted params."""
    config = vae.as_config(vae_configs.get(f"tiny_{variant}"))
    torch.manual_seed(seed)
    model = diffusers.AutoencoderKLWan(**diffusers_kwargs(config)).eval().float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    converted, params = params_from_source(model.state_dict())
    assert converted == config
    return model, config, params


@pytest.fixture(scope="module", params=["wan22", "wan21"])
def reference(request):
    return build_reference(request.param)


def to_torch(x):
    return torch.from_numpy(np.array(x)).permute(0, 4, 1, 2, 3).contiguous()


def to_jax(x):
    return jnp.asarray(x.permute(0, 2, 3, 4, 1).numpy())


def random_video(config, frames, seed=0, size=None):
    h, w = size or SIZES[config.variant]
    return jax.random.uniform(jax.random.key(seed), (1, frames, h, w, 3), minval=-1, maxval=1)


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


# ---------------------------------------------------------------------------------------------
# Configs


def test_full_size_presets_match_reference_parameter_counts():
    def millions(tree):
        return round(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree)) / 1e6, 1)

    # the release (docs/design.md, "Models"; verified by instantiating the official modules)
    wan22_params = vae.abstract_params(vae_configs.wan22())
    assert millions(wan22_params) == 704.7
    assert millions(wan22_params["encoder"]) == 149.6
    assert millions(wan22_params["decoder"]) == 555.0
    assert millions(vae.abstract_params(vae_configs.wan21())) == 126.9
    wan22, wan21 = vae.as_config(vae_configs.wan22()), vae.as_config(vae_configs.wan21())
    assert (vae.spatial_factor(wan22), vae.temporal_factor(wan22)) == (16, 4)
    assert (vae.spatial_factor(wan21), vae.temporal_factor(wan21)) == (8, 4)


def test_latent_constants_match_diffusers_defaults_and_reference_table():
    with torch.device("meta"):
        model = diffusers.AutoencoderKLWan()
    assert tuple(model.config.latents_mean) == vae.WAN21_LATENTS_MEAN
    assert tuple(model.config.latents_std) == vae.WAN21_LATENTS_STD
    # spot checks against the release's constants
    assert vae.WAN22_LATENTS_MEAN[19] == 0.5109 and vae.WAN22_LATENTS_STD[39] == 1.6887
    assert vae.WAN22_LATENTS_MEAN[47] == -0.0667 and vae.WAN22_LATENTS_STD[0] == 0.4765
    assert len(vae.WAN22_LATENTS_MEAN) == len(vae.WAN22_LATENTS_STD) == 48


def test_config_roundtrip_and_validation():
    config = vae.as_config(vae_configs.tiny_wan22())
    assert vae.VAEConfig.from_dict(config.to_dict()) == config
    assert vae.as_config(config.to_dict()) == config
    with pytest.raises(ValueError, match="variant"):
        config.replace(variant="wan3")
    with pytest.raises(ValueError, match="z_dim"):
        config.replace(z_dim=16)
    with pytest.raises(ValueError, match="temporal_downsample"):
        config.replace(temporal_downsample=(True,))
    with pytest.raises(ValueError, match="unknown"):
        vae.VAEConfig.from_dict({"base_dims": 3})
    with pytest.raises(ValueError, match="unknown VAE preset"):
        vae_configs.get("wan3")


# ---------------------------------------------------------------------------------------------
# Parity with diffusers (encode: normalised mean; decode: clamped pixels)


# 1 frame (the image alone) and 9 (two 4-frame chunks, so the causal caches carry across
# chunks) cover every path; 5 and 13 repeat them (run with -m slow).
_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "frames", [1, pytest.param(5, marks=_SLOW), 9, pytest.param(13, marks=_SLOW)]
)
def test_encode_decode_match_diffusers(reference, frames):
    model, config, params = reference
    video = random_video(config, frames, seed=frames)
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        mu = model.encode(to_torch(video)).latent_dist.mean
        expected_latents = to_jax((mu - mean) / std)
        # decode the reference latents so both decoders see identical inputs
        expected_video = to_jax(model.decode(mu).sample)
    latents = vae.encode(params, config, video)
    s = vae.spatial_factor(config)
    h, w = SIZES[config.variant]
    assert latents.shape == (1, (frames - 1) // 4 + 1, h // s, w // s, config.z_dim)
    assert rel_err(latents, expected_latents) <= 1e-4
    decoded = vae.decode(params, config, expected_latents)
    assert decoded.shape == (1, frames, h, w, 3)
    assert rel_err(decoded, expected_video) <= 1e-4
    assert float(jnp.abs(decoded).max()) <= 1.0


# ---------------------------------------------------------------------------------------------
# Causality and streaming


def test_encoding_is_causal_and_prefix_stable(reference):
    _, config, params = reference
    video = random_video(config, 9, seed=3)
    short = vae.encode(params, config, video[:, :5])
    long = vae.encode(params, config, video)
    np.testing.assert_array_equal(np.asarray(short), np.asarray(long[:, :2]))
    # decoding 2 latent frames gives the first 5 frames of decoding 3
    np.testing.assert_array_equal(
        np.asarray(vae.decode(params, config, long[:, :2])),
        np.asarray(vae.decode(params, config, long)[:, :5]),
    )


@pytest.mark.parametrize("group", [1, 2, 3])
def test_streaming_decode_equals_full_decode(reference, group):
    _, config, params = reference
    # 4 latent frames at 2x3: the shapes of the 13-frame parity case (compiled programs reused)
    latents = jax.random.normal(jax.random.key(7), (1, 4, 2, 3, config.z_dim))
    full = np.asarray(vae.decode(params, config, latents))
    decoder = vae.StreamingDecoder(params, config)
    pieces = []
    for start in range(0, latents.shape[1], group):
        chunk = latents[:, start : start + group]
        out = decoder.push(chunk)
        expected_frames = 4 * chunk.shape[1] - (3 if start == 0 else 0)
        assert out.shape[1] == expected_frames
        pieces.append(np.asarray(out))
    streamed = np.concatenate(pieces, axis=1)
    assert streamed.shape == full.shape
    assert np.abs(streamed - full).max() <= 1e-5


def test_streaming_encode_equals_full_encode(reference):
    _, config, params = reference
    video = random_video(config, 13, seed=5)
    encoder = vae.StreamingEncoder(params, config)
    outputs = []
    for start, stop in [(0, 3), (3, 5), (5, 6), (6, 13)]:
        latents = encoder.push(video[:, start:stop])
        if latents is not None:
            outputs.append(np.asarray(latents))
    encoder.finish()
    streamed = np.concatenate(outputs, axis=1)
    full = np.asarray(vae.encode(params, config, video))
    assert streamed.shape == full.shape
    assert np.abs(streamed - full).max() <= 1e-5
    encoder.reset()
    encoder.push(video[:, :3])
    with pytest.raises(ValueError, match="left over"):
        encoder.finish()


def test_chunk_functions_carry_the_cache(reference):
    _, config, params = reference
    video = random_video(config, 5, seed=9)
    first, cache = vae.encode_chunk(params, config, video[:, :1])
    second, cache = vae.encode_chunk(params, config, video[:, 1:5], cache)
    np.testing.assert_allclose(
        np.concatenate([first, second], 1), vae.encode(params, config, video), atol=1e-5
    )
    with pytest.raises(ValueError, match="takes 4 frame"):
        vae.encode_chunk(params, config, video[:, 1:3], cache)


def test_frame_by_frame_decoder_tail_equals_one_piece_chunk():
    """The chunk functions run the decoder after each time-doubling stage one frame at a time
    (memory); running the whole chunk in one piece (WanVAE.decode_chunk) gives the same.
    (Both variants share these blocks; the one-piece path is where frame order matters.)"""
    _, config, params = build_reference("wan22")
    latents = jax.random.normal(jax.random.key(11), (1, 2, 2, 3, config.z_dim))
    _, cache = vae.decode_chunk(params, config, latents[:, :1])
    apply = jax.jit(
        lambda variables, z: vae.WanVAE(config).apply(
            variables, z, False, method=vae.WanVAE.decode_chunk, mutable=["cache"]
        )[0]
    )
    one_piece = apply({"params": params, "cache": cache}, latents[:, 1:])
    by_frame, _ = vae.decode_chunk(params, config, latents[:, 1:], cache)
    np.testing.assert_allclose(one_piece, by_frame, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Tiling


def test_tiled_decode_blends_tiles_and_streams_identically():
    _, config, params = build_reference("wan21")
    latents = jax.random.normal(jax.random.key(2), (1, 4, 2, 3, config.z_dim))
    tiling = vae.make_tiling(2, 3, 2, 1)
    assert tiling.starts_h == (0,) and tiling.starts_w == (0, 1)
    assert vae.make_tiling(2, 3, 3, 1) is None  # one tile covers it: untiled path
    untiled = np.asarray(vae.decode(params, config, latents))
    tiled = np.asarray(vae.decode(params, config, latents, tile_size=2, tile_overlap=1))
    assert tiled.shape == untiled.shape
    assert np.abs(tiled).max() <= 1.0
    # where only one tile has weight (pixel columns 0..7), the result is that tile decoded alone
    # (frame 0 depends on latent frame 0 only: the VAE is causal)
    alone = np.asarray(vae.decode(params, config, latents[:, :1, :, :2]))
    np.testing.assert_allclose(tiled[:, :1, :, :8], alone[:, :, :, :8], atol=1e-5)
    # seams differ from the untiled decode (tiles see less context): measured, not bounded
    seam_error = np.abs(tiled - untiled).max()
    assert seam_error > 0
    # the streaming decoder tiles the same way
    decoder = vae.StreamingDecoder(params, config, tile_size=2, tile_overlap=1)
    streamed = np.concatenate([decoder.push(latents[:, :3]), decoder.push(latents[:, 3:])], 1)
    assert np.abs(streamed - tiled).max() <= 1e-5
    # ... also with the tile caches offloaded to the host, one tile on the device at a time
    decoder = vae.StreamingDecoder(params, config, tile_size=2, tile_overlap=1, offload_cache=True)
    offloaded = np.concatenate([decoder.push(latents[:, :1]), decoder.push(latents[:, 1:])], 1)
    assert np.abs(offloaded - tiled).max() <= 1e-5
    print(f"tiled (2/1) vs untiled decode: max |diff| {seam_error:.3g}")


def _smooth_video(height: int, width: int, frames: int = 5, seed: int = 4) -> np.ndarray:
    """A video with image-like spatial correlation (bicubic upsampled noise), in [-1, 1]."""
    low = jax.random.uniform(jax.random.key(seed), (1, frames, height // 8, width // 8, 3))
    video = jax.image.resize(2 * low - 1, (1, frames, height, width, 3), "bicubic")
    return np.asarray(jnp.clip(video, -1, 1))


def test_tiled_encode_is_exact_with_one_tile_and_the_ramp_blend_of_several():
    _, config, params = build_reference("wan22")
    video = _smooth_video(64, 96)  # latent 4 x 6
    untiled = np.asarray(vae.encode(params, config, video))
    # one tile covering the frame: the untiled path; the tile loop with one tile is bitwise too
    assert vae.make_tiling(4, 6, 6, 2) is None
    np.testing.assert_array_equal(vae.encode(params, config, video, tile_size=6), untiled)
    one_tile = vae.Tiling(4, 6, (0,), (0,))
    np.testing.assert_array_equal(
        vae_tiling._encode_tiled(params, config, video, one_tile), untiled
    )
    # two 4 x 4 tiles overlapping by 2 latent columns, video as a host (numpy) array
    assert vae.make_tiling(4, 6, 4, 2) == vae.Tiling(4, 4, (0,), (0, 2))
    tiled = np.asarray(vae.encode(params, config, video, tile_size=4, tile_overlap=2))
    assert tiled.shape == untiled.shape
    # latent columns 0..1 belong to the first tile only: exactly that tile encoded alone
    alone = np.asarray(vae.encode(params, config, video[:, :, :, :64]))
    np.testing.assert_allclose(tiled[..., :2, :], alone[..., :2, :], rtol=0, atol=1e-6)
    # the documented blend, written out: linear ramps over the 2 overlapping columns, tile A
    # (latent columns 0..3) weighted [1, 1, 2/3, 1/3], tile B (columns 2..5) [1/3, 2/3, 1, 1]
    second = np.asarray(vae.encode(params, config, video[:, :, :, 32:]))
    blended = np.zeros_like(untiled)
    blended[..., 0:4, :] += alone * np.array([1, 1, 2 / 3, 1 / 3])[:, None]
    blended[..., 2:6, :] += second * np.array([1 / 3, 2 / 3, 1, 1])[:, None]
    np.testing.assert_allclose(tiled, blended, rtol=0, atol=1e-6)
    # the encoder's middle attention is global per frame, so tiles differ from the whole
    # frame: 0.127 relative (L2) on this tiny random VAE, falling with the tile size (2.3e-2
    # with 16 x 16 tiles of a 16 x 24 latent, 5.1e-2 with 12 x 12).
    relative = np.linalg.norm(tiled - untiled) / np.linalg.norm(untiled)
    print(f"tiled encode (4/2 of 4x6) vs untiled: relative {relative:.3g}")
    assert relative > 0


def test_tiled_streaming_encoder_equals_the_tiled_encode():
    """One encoder cache per tile, chunks pushed in any grouping (caches on the device or
    offloaded to the host): the latents of the whole-clip tiled encode."""
    _, config, params = build_reference("wan22")
    video = _smooth_video(64, 96)
    tiled = np.asarray(vae.encode(params, config, video, tile_size=4, tile_overlap=2))
    for offload in (False, True):
        encoder = vae.StreamingEncoder(
            params, config, tile_size=4, tile_overlap=2, offload_cache=offload
        )
        pieces = [encoder.push(video[:, :3]), encoder.push(video[:, 3:])]
        encoder.finish()
        streamed = np.concatenate(pieces, axis=1)
        np.testing.assert_allclose(streamed, tiled, rtol=0, atol=1e-5)
    # one tile covering the frame is the untiled streaming encoder, bit for bit
    covering = vae.StreamingEncoder(params, config, tile_size=6).push(video)
    np.testing.assert_array_equal(covering, vae.StreamingEncoder(params, config).push(video))


def test_tiled_hybrid_reference_and_anchor():
    _, config, params = build_reference("wan22")
    image = jnp.asarray(_smooth_video(64, 96, frames=1, seed=5)[:, 0])
    video_low = jnp.asarray(_smooth_video(32, 48, seed=6))
    tiles = (4, 2, True)  # tile size, overlap, caches in host memory
    z_ref = reference_lib.encode_hybrid_reference(params, config, video_low, image, tiles=tiles)
    whole = reference_lib.hybrid_reference(video_low, image)
    expected = vae.encode(params, config, whole, tile_size=4, tile_overlap=2)
    np.testing.assert_allclose(z_ref, expected, rtol=0, atol=1e-5)
    anchor = reference_lib.encode_anchor(params, config, image, tiles)
    np.testing.assert_allclose(anchor, z_ref[:, :1], rtol=0, atol=1e-5)  # causal, tiled too


def test_tile_blend_weights_reassemble_an_image_exactly():
    tiling = vae.make_tiling(7, 10, 4, 1)
    origins, weights, total = vae._tile_arrays(tiling, scale=8)
    image = jax.random.normal(jax.random.key(0), (1, 2, 56, 80, 3))
    out = jnp.zeros_like(image)
    for origin, weight in zip(origins, weights):
        y, x = origin * 8
        crop = image[:, :, y : y + 32, x : x + 32]
        out = vae._place(out, crop * weight[None, None, :, :, None], jnp.asarray(origin), 8)
    assert total.min() > 0
    np.testing.assert_allclose(out / total[None, None, :, :, None], image, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Errors


def test_bad_inputs_raise_clear_errors():
    config = vae.as_config(vae_configs.tiny_wan22())
    params = vae.abstract_params(config)  # never reached: errors come first
    ok = jnp.zeros((1, 5, 32, 32, 3))
    with pytest.raises(ValueError, match="4k\\+1"):
        vae.encode(params, config, ok[:, :4])
    with pytest.raises(ValueError, match="multiples of 16"):
        vae.encode(params, config, jnp.zeros((1, 5, 32, 40, 3)))
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        vae.encode(params, config, jnp.zeros((1, 5, 32, 32, 4)))
    with pytest.raises(ValueError, match="B, F, H, W, 3"):
        vae.encode(params, config, jnp.zeros((5, 32, 32, 3)))
    with pytest.raises(ValueError, match="z_dim=48"):
        vae.decode(params, config, jnp.zeros((1, 2, 2, 2, 16)))
    with pytest.raises(ValueError, match="tile_overlap"):
        vae.decode(params, config, jnp.zeros((1, 2, 8, 8, 48)), tile_size=4, tile_overlap=4)
    for size, overlap in ((4, 4), (0, 0), (4, -1)):  # before any encoding work
        with pytest.raises(ValueError, match="tile_size >= 1 and 0 <= tile_overlap"):
            vae.encode(params, config, ok, tile_size=size, tile_overlap=overlap)
    with pytest.raises(ValueError, match="offload_cache needs tile_size"):
        vae.StreamingDecoder(params, config, offload_cache=True)
    with pytest.raises(ValueError, match="offload_cache needs tile_size"):
        vae.StreamingEncoder(params, config, offload_cache=True)
    with pytest.raises(ValueError, match="one latent frame"):
        vae.decode_chunk(params, config, jnp.zeros((1, 2, 2, 2, 48)))


def test_streaming_decoder_refuses_a_different_stream():
    _, config, params = build_reference("wan21")
    decoder = vae.StreamingDecoder(params, config)
    decoder.push(jnp.zeros((1, 1, 2, 3, 16)))
    with pytest.raises(ValueError, match="do not continue"):
        decoder.push(jnp.zeros((1, 1, 3, 3, 16)))
    decoder.reset()
    assert decoder.push(jnp.zeros((1, 1, 3, 3, 16))).shape == (1, 1, 24, 24, 3)


# ---------------------------------------------------------------------------------------------
# Full size, from abstract shapes only


def test_full_size_wan22_decode_chunk_compiles_at_2k():
    """Lowers and compiles (never runs) the real decoder step at 2560x1408: ~5 s on CPU."""
    config = vae.as_config(vae_configs.wan22())
    params = vae.abstract_params(config)
    latent = jax.ShapeDtypeStruct((1, 1, 1408 // 16, 2560 // 16, 48), jnp.float32)
    _, cache = jax.eval_shape(
        lambda p, z: vae._decode_step(p, config, None, z, first=True), params, latent
    )
    start = time.perf_counter()
    compiled = vae._decode_step.lower(params, config, cache, latent, False).compile()
    stats = compiled.memory_analysis()
    print(
        f"2560x1408 decode chunk: compile {time.perf_counter() - start:.0f}s, "
        f"temp {stats.temp_size_in_bytes / 2**30:.2f} GiB, "
        f"args {stats.argument_size_in_bytes / 2**30:.2f} GiB, "
        f"out {stats.output_size_in_bytes / 2**30:.2f} GiB, "
        f"cache {vae.cache_bytes(cache) / 2**30:.2f} GiB"
    )
    assert stats.output_size_in_bytes > 4 * 1408 * 2560 * 3 * 4  # 4 frames out + the cache
    # the donated cache is updated in place, and the frame-by-frame tail keeps the step's
    # temporaries below the size of the cache itself (~44 GB when run on 4 frames at once)
    assert stats.alias_size_in_bytes >= vae.cache_bytes(cache)
    assert stats.temp_size_in_bytes < vae.cache_bytes(cache)
