"""A trained model carries its sampling contract (csg/contract.py): the export writes it,
sampling refuses a preset that contradicts it, naming the field, before loading weights."""

from __future__ import annotations

import dataclasses

import pytest

from swifti2v_jax import checkpoints
from swifti2v_jax.csg import contract
from swifti2v_jax.demo import BUNDLED_WEIGHTS
from swifti2v_jax.presets import sample as sample_presets
from swifti2v_jax.sampling import models
from swifti2v_jax.sampling.config import PipelineError, pipeline_config


def _inspect(**stage2):
    config = pipeline_config(sample_presets.get_config("demo"))
    config = dataclasses.replace(config, stage2=dataclasses.replace(config.stage2, **stage2))
    paths = models.resolve_model_paths({"root": str(BUNDLED_WEIGHTS)}, "ti2v")
    return config, paths


def test_the_bundled_models_carry_the_demo_preset_contract():
    for name in ("dit", "stage2"):
        assert contract.TrainedWith.read(checkpoints.read_metadata(BUNDLED_WEIGHTS / name))
    models.inspect_models(*reversed(_inspect()))  # the demo preset agrees
    # The end-to-end baseline is not held to the trained window (docs/design.md, "CSG rules").
    models.inspect_models(*reversed(_inspect(end_to_end=True, noisy_blocks=2)))


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(noisy_blocks=2), "stage2.noisy_blocks=2"),
        (dict(neighbours=2), "stage2.neighbours=2"),
    ],
)
def test_a_preset_that_contradicts_the_trained_window_is_refused(change, field):
    config, paths = _inspect(**change)
    with pytest.raises(PipelineError, match=f"was trained with .* the preset sets {field}") as e:
        models.inspect_models(paths, config)
    assert "\n" not in str(e.value)


def test_text_length_and_latent_statistics_are_checked():
    config, paths = _inspect()
    with pytest.raises(PipelineError, match="Stage I .* text_len=64 .* text_len=512"):
        models.inspect_models(paths, dataclasses.replace(config, text_len=512))
    trained = contract.TrainedWith.read(checkpoints.read_metadata(paths.stage2))
    statistics = dict(latents_mean=trained.latents_mean, latents_std=trained.latents_std)
    trained.check("m", text_len=64, **statistics)
    shifted = [v + 0.1 for v in trained.latents_std]
    with pytest.raises(contract.ContractError, match="latents_std"):
        trained.check("m", text_len=64, latents_mean=trained.latents_mean, latents_std=shifted)
    with pytest.raises(contract.ContractError, match="stage2.conditioning='refine'"):
        trained.check("m", text_len=64, conditioning="refine", **statistics)


def test_a_model_without_a_contract_is_not_checked():
    assert contract.TrainedWith.read({"kind": "dit", "config": {}}) is None
