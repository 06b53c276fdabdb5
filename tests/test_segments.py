"""Properties of the CSG segment planner over many (T, M, N)."""

import numpy as np
import pytest

from swifti2v_jax.csg import layout as segments


@pytest.mark.parametrize("num_blocks", [2, 3, 4, 5, 6, 9, 17, 21, 33])
@pytest.mark.parametrize("noisy", [1, 2, 3, 5])
@pytest.mark.parametrize("neighbours", [0, 1, 2, 3])
def test_plan_properties(num_blocks, noisy, neighbours):
    plan = segments.plan_segments(num_blocks, noisy, neighbours)
    size = min(1 + noisy + neighbours, num_blocks)
    generated = []
    for i, window in enumerate(plan):
        # Constant window size, anchor first, increasing blocks, all inside the clip.
        assert window.size == size
        assert window.blocks[0] == 0 and not window.is_noisy[0]
        assert list(window.blocks) == sorted(set(window.blocks))
        assert window.blocks[-1] < num_blocks
        noisy_blocks = window.noisy_blocks
        # Noisy blocks form the tail of the window; context is anchor + the blocks just before.
        assert window.is_noisy == (False,) * (size - len(noisy_blocks)) + (True,) * len(
            noisy_blocks
        )
        neighbours_here = window.context_blocks[1:]
        # Neighbours are the most recently generated blocks (contiguous, right before the noisy).
        if neighbours_here:
            assert neighbours_here[-1] == noisy_blocks[0] - 1
            assert set(neighbours_here) <= set(generated)
            assert list(neighbours_here) == sorted(generated)[-len(neighbours_here) :]
        if 0 < i < len(plan) - 1:  # interior segments: exactly M noisy, N neighbours
            assert len(noisy_blocks) == noisy and len(neighbours_here) == neighbours
        assert len(noisy_blocks) >= min(noisy, num_blocks - 1 - len(generated))
        generated.extend(noisy_blocks)
    # Every block 1..T-1 generated exactly once, in order.
    assert generated == list(range(1, num_blocks))


def test_paper_setting_21_blocks():
    plan = segments.plan_segments(21, 3, 1)
    assert len(plan) == 7  # 3+1 noisy first, then 3 each, the last with an extra neighbour
    assert plan[0].blocks == (0, 1, 2, 3, 4) and plan[0].noisy_blocks == (1, 2, 3, 4)
    assert plan[1].blocks == (0, 4, 5, 6, 7) and plan[1].noisy_blocks == (5, 6, 7)
    assert plan[-1].blocks == (0, 17, 18, 19, 20) and plan[-1].noisy_blocks == (20,)


def test_short_clip_is_one_window_and_equals_end_to_end():
    plan = segments.plan_segments(3, 3, 1)
    assert plan == [segments.end_to_end_window(3)]
    assert segments.plan_segments(5, 8, 2) == [segments.end_to_end_window(5)]


def test_training_windows_use_sampling_layouts():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        window = segments.sample_training_window(9, 3, 1, rng)
        assert window.size == 5
        seen.add(window.noisy_blocks[0])
        assert window == segments.window_for_start(9, 3, 1, window.noisy_blocks[0])
    assert seen == set(range(1, 9))


@pytest.mark.parametrize(
    "args, match",
    [((1, 3, 1), "at least 2"), ((5, 0, 1), "M must be"), ((5, 2, -1), "N must be")],
)
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        segments.plan_segments(*args)
    with pytest.raises(ValueError, match="start"):
        segments.window_for_start(5, 2, 1, 5)
