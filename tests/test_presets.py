"""Model presets in the package, the thin config files over them, config sections -> dataclasses."""

from __future__ import annotations

import ml_collections
import pytest

from configs import dit as dit_file
from configs import stage1_lora, stage2
from configs import t5 as t5_file
from configs import vae as vae_file
from swifti2v_jax import presets
from swifti2v_jax.config_fields import ConfigFieldError
from swifti2v_jax.models import dit, t5, vae
from swifti2v_jax.presets import dit as dit_presets
from swifti2v_jax.presets import t5 as t5_presets
from swifti2v_jax.presets import vae as vae_presets
from swifti2v_jax.training import experiment

TABLES = [
    (dit_presets, dit_file, dit.DiTConfig),
    (t5_presets, t5_file, t5.T5Config),
    (vae_presets, vae_file, vae.VAEConfig),
]


@pytest.mark.parametrize("module, config_file, cls", TABLES)
def test_every_preset_builds_its_dataclass_and_the_config_file_serves_it(module, config_file, cls):
    for name in module.PRESETS:
        built = module.config(name)
        assert isinstance(built, cls)
        assert config_file.get_config(name).to_dict() == module.get(name).to_dict()
        # the preset's fields are exactly the dataclass's (no field silently dropped)
        assert set(module.get(name)) <= {f for f in cls.__dataclass_fields__}
    assert config_file.get_config().to_dict() == module.get(module.DEFAULT).to_dict()
    with pytest.raises(ValueError, match="unknown .* preset 'nope'; choose one of"):
        config_file.get_config("nope")


def test_presets_are_fresh_copies():
    first = dit_presets.get("tiny")
    first.dim = 1
    assert dit_presets.get("tiny").dim == 64


def test_dispatch_defaults_and_names():
    table = {"a": lambda: ml_collections.ConfigDict({"x": 1}), "b": lambda: None}
    get_config = presets.dispatch(table, "a", "thing")
    assert get_config().x == 1 and get_config("").x == 1 and get_config("a").x == 1
    with pytest.raises(ValueError, match=r"unknown thing preset 'c'; choose one of \['a', 'b'\]"):
        get_config("c")
    for config_file in (stage2, stage1_lora):
        assert config_file.get_config("").to_dict() == config_file.get_config("ti2v_5b").to_dict()


def test_known_wan_sizes():
    assert dit_presets.config("ti2v_5b").head_dim == 128
    assert dit_presets.config("ti2v_5b_concat").in_dim == 2 * dit_presets.config("ti2v_5b").in_dim
    assert vae_presets.config("wan22").spatial_factor == 16
    assert vae_presets.config("wan21").spatial_factor == 8
    assert vae_presets.config("demo").spatial_factor == 4
    assert t5_presets.config("umt5_xxl").inner_dim == 4096


def test_training_sections_become_dataclasses_and_reject_unknown_fields():
    config = stage2.get_config("tiny")
    config.model_overrides.remat = "full"
    model = experiment.model_config(config)
    assert model.remat == "full" and model.in_dim == 96  # override applied, preset kept
    assert experiment.loss_config(config).online_degradation == "latent_blur_noise"
    assert experiment.optimizer_config(config).learning_rate == 1e-3

    config.loss.misspelt_knob = 1.0
    with pytest.raises(ConfigFieldError, match="unknown loss field.*misspelt_knob"):
        experiment.loss_config(config)
    config = stage2.get_config("tiny")
    config.optimizer = ml_collections.ConfigDict({**config.optimizer, "learning_rate": "fast"})
    with pytest.raises(ConfigFieldError, match="optimizer.learning_rate must be a number"):
        experiment.optimizer_config(config)
    config = stage2.get_config("tiny")
    config.model_overrides.dropout = 0.1
    with pytest.raises(ConfigFieldError, match="unknown DiT field.*dropout"):
        experiment.model_config(config)


def test_sections_from_dataclass_defaults_round_trip_and_keep_types():
    from swifti2v_jax import config_fields
    from swifti2v_jax.training.loss import LossConfig
    from swifti2v_jax.training.optim import OptimizerConfig

    for instance in (LossConfig(), OptimizerConfig(learning_rate=3e-4, decay_steps=None)):
        section = config_fields.as_section(instance)
        assert config_fields.from_fields(type(instance), section) == instance
    section = config_fields.as_section(OptimizerConfig())
    section.decay_steps = 1000  # a None default stays settable, as an int
    assert config_fields.from_fields(OptimizerConfig, section).decay_steps == 1000
    with pytest.raises(TypeError):
        section.decay_steps = "soon"
    with pytest.raises(TypeError):
        section.learning_rate = "fast"


def test_sample_presets_state_only_what_differs_from_the_dataclass_defaults():
    """Each sampler default is stated once, in its dataclass: the base every sample preset
    starts from holds exactly the dataclasses' fields and defaults, so a field a preset does
    not override is the dataclass default."""
    import dataclasses

    from swifti2v_jax import config_fields
    from swifti2v_jax.presets import sample as sample_presets
    from swifti2v_jax.sampling import config as sampling_config

    defaults = sampling_config.PipelineConfig()
    base = sample_presets.get_config(sample_presets.DEFAULT)
    base_pipeline = sampling_config.pipeline_config(sample_presets._base())
    for field in dataclasses.fields(defaults):
        value = getattr(base_pipeline, field.name)
        if field.name == "attention_backend":
            value = value or None  # '' on the command line is the dataclass's None
        if dataclasses.is_dataclass(value):
            for inner in dataclasses.fields(value):
                want = getattr(getattr(defaults, field.name), inner.name)
                got = getattr(value, inner.name)
                assert got == want, f"base {field.name}.{inner.name}: {got!r} != {want!r}"
        elif field.name != "text_cache_dir":  # '' means sample.py's cache folder there
            assert value == getattr(defaults, field.name), field.name
    for name in sample_presets.PRESETS:
        config = sample_presets.get_config(name)
        for section in ("stage1", "stage2", "memory"):
            dataclass_fields = config_fields.to_fields(getattr(defaults, section))
            assert set(config[section]) == set(dataclass_fields), (name, section)
        sampling_config.pipeline_config(config)  # and every preset is valid
    assert base.preset == "demo"
