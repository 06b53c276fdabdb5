import numpy as np
import pytest

from swifti2v_jax.data import procedural


def test_render_pair_is_deterministic_and_consistent():
    high, low = procedural.render_pair(5, 5, 32, 48, factor=4, supersample=1)
    assert high.shape == (5, 32, 48, 3) and low.shape == (5, 8, 12, 3)
    assert high.dtype == np.float32 and -1 <= high.min() and high.max() <= 1
    np.testing.assert_allclose(low, procedural.box_downsample(high, 4), atol=1e-6)
    again, _ = procedural.render_pair(5, 5, 32, 48, factor=4, supersample=1)
    np.testing.assert_array_equal(high, again)
    other, _ = procedural.render_pair(6, 5, 32, 48, factor=4, supersample=1)
    assert np.abs(other - high).mean() > 0.05
    # The camera moves: consecutive frames differ, but not wildly.
    step = np.abs(high[1:] - high[:-1]).mean()
    assert 1e-3 < step < 0.3


def test_bad_sizes():
    with pytest.raises(ValueError, match="4k\\+1"):
        procedural.render_pair(0, 4, 32, 32)
    with pytest.raises(ValueError, match="divisible"):
        procedural.box_downsample(np.zeros((1, 10, 10, 3)), 4)
