"""The one config converter: coercion, nesting, unknown fields, round trip."""

import dataclasses
import pathlib

import ml_collections
import pytest

from swifti2v_jax.config_fields import ConfigFieldError, from_fields, to_fields


@dataclasses.dataclass(frozen=True)
class Inner:
    steps: int = 4
    shift: float = 5.0
    cap: float | None = None

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = "a"
    flag: bool = True
    size: tuple[int, int] | None = None
    path: pathlib.Path | None = None
    inner: Inner = Inner()


def test_nested_config_dict_with_coercion():
    cfg = ml_collections.ConfigDict(
        {"name": "b", "flag": "false", "size": [64, 32], "inner": {"steps": 8.0, "shift": 3}}
    )
    out = from_fields(Outer, cfg)
    assert out == Outer(name="b", flag=False, size=(64, 32), inner=Inner(steps=8, shift=3.0))
    assert isinstance(out.inner.shift, float) and isinstance(out.inner.steps, int)


def test_missing_fields_take_defaults_and_none_strings():
    assert from_fields(Outer, {}) == Outer()
    assert from_fields(Outer, {"path": "none", "inner": {"cap": ""}}) == Outer()
    assert from_fields(Outer, {"path": "~/x"}).path == pathlib.Path("~/x").expanduser()


def test_unknown_field_is_named_with_its_section():
    with pytest.raises(ConfigFieldError, match=r"unknown stage2 field\(s\) stepz"):
        from_fields(Outer, {"stepz": 3}, "stage2")
    with pytest.raises(ConfigFieldError, match=r"unknown stage2.inner field\(s\) typo"):
        from_fields(Outer, {"inner": {"typo": 1}}, "stage2")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"flag": "maybe"}, "flag must be true or false"),
        ({"inner": {"steps": 2.5}}, "steps must be an integer"),
        ({"inner": {"steps": True}}, "steps must be an integer"),
        ({"inner": {"shift": "fast"}}, "shift must be a number"),
        ({"name": 3}, "name must be a string"),
        ({"size": [1, 2, 3]}, "size must have 2 items"),
        ({"size": "64x32"}, "size must be a sequence"),
    ],
)
def test_bad_values_raise(fields, message):
    with pytest.raises(ConfigFieldError, match=message):
        from_fields(Outer, fields)


def test_dataclass_validation_still_runs():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        from_fields(Outer, {"inner": {"steps": 0}})


def test_round_trip():
    value = Outer(name="c", flag=False, size=(8, 4), path=pathlib.Path("/tmp/x"), inner=Inner(2))
    assert from_fields(Outer, to_fields(value)) == value
