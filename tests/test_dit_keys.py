"""The DiT converter against the Wan2.2 release key table (tests/data/wan22_dit_keys.json).

The table holds every tensor name and shape of the TI2V-5B release and of one I2V-A14B expert,
in the original and the diffusers layout, written down from the released models rather than
from this repository's converter: a mapping that only inverts itself cannot pass these tests.
No weights are allocated (zero-byte arrays stand in for the full-size tensors).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from conversion import common
from conversion import dit as dit_conversion
from swifti2v_jax.models.dit import DiTConfig, abstract_params
from swifti2v_jax.presets import dit as dit_presets

TABLE = json.loads((Path(__file__).parent / "data" / "wan22_dit_keys.json").read_text())
MODELS = {"ti2v_5b": "ti2v_5b", "i2v_a14b_expert": "i2v_a14b"}  # table entry -> preset


def _release(entry: str):
    model = TABLE[entry]
    original = {o: tuple(s) for o, _, s in model["tensors"]}
    diffusers = {d: tuple(s) for _, d, s in model["tensors"]}
    return model, original, diffusers


def _shape_only(shapes: dict) -> common.DictSource:
    """A tensor source of zero-byte arrays with the release shapes."""
    return common.DictSource({k: np.empty(s, np.dtype([])) for k, s in shapes.items()})


@pytest.mark.parametrize("entry", MODELS)
def test_table_is_the_release_and_the_preset_matches_it(entry):
    model, original, diffusers = _release(entry)
    assert len(original) == len(diffusers) == model["num_tensors"]
    assert sum(int(np.prod(s)) for s in original.values()) == model["num_params"]
    config = DiTConfig.from_dict(dit_presets.get(MODELS[entry]))
    fields = model["config"]
    assert (config.dim, config.ffn_dim, config.num_heads, config.num_layers) == (
        fields["dim"], fields["ffn_dim"], fields["num_heads"], fields["num_layers"],
    )  # fmt: skip
    assert (config.in_dim, config.out_dim, config.freq_dim, config.model_type) == (
        fields["in_dim"], fields["out_dim"], fields["freq_dim"], fields["model_type"],
    )  # fmt: skip


@pytest.mark.parametrize("layout", ["original", "diffusers"])
@pytest.mark.parametrize("entry", MODELS)
def test_converter_reads_exactly_the_release_keys(entry, layout):
    """Both release layouts rename to exactly the table's original names and shapes, which are
    exactly what the converter expects for that config (no key missing, none extra)."""
    model, original, diffusers = _release(entry)
    config = DiTConfig.from_dict(dit_presets.get(MODELS[entry]))
    assert dit_conversion.expected_shapes(config) == original
    source = _shape_only(original if layout == "original" else diffusers)
    rename = dit_conversion.diffusers_to_original if layout == "diffusers" else (lambda n: n)
    renamed = common.RenamedSource(source, {rename(k): k for k in source})
    assert {k: renamed.shape(k) for k in renamed} == original
    common.check_keys(renamed, dit_conversion.expected_shapes(config), f"{entry} {layout}")
    # Each (original, diffusers) pair of the table, name by name.
    for o, d, _ in model["tensors"]:
        assert dit_conversion.diffusers_to_original(d) == o
        assert dit_conversion.original_to_diffusers(o) == d


@pytest.mark.parametrize("entry", MODELS)
def test_release_tensors_fill_every_flax_parameter_once(entry):
    """Every release tensor lands in one Flax leaf (one layer of a stacked leaf) with the
    leaf's shape after the layout transform, and every leaf of the model is filled."""
    _, original, _ = _release(entry)
    config = DiTConfig.from_dict(dit_presets.get(MODELS[entry]))
    leaves = {
        tuple(k.key for k in path): leaf.shape
        for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]
    }
    filled: dict[tuple, set] = {}
    for name, shape in original.items():
        path, transform, layer = dit_conversion.flax_destination(name)
        tensor = np.empty(shape, np.dtype([]))
        got = (transform(tensor) if transform else tensor).shape
        want = leaves[path] if layer is None else leaves[path][1:]
        assert got == want, f"{name} -> {path}: {got} vs {want}"
        assert layer not in filled.setdefault(path, set()), f"{name} fills {path} twice"
        filled[path].add(layer)
    assert set(filled) == set(leaves)
    for path, layers in filled.items():
        expected = {None} if layers == {None} else set(range(config.num_layers))
        assert layers == expected, path
