import numpy as np
import pytest

from catdog.views.plots import channel_stats, feature_grid, scale_to_uint8


def test_seed_standardisation_and_dead_channels_without_nan():
    """The seed's (x - mean) / std * 64 + 128, clipped, on channels whose answer is known by hand."""
    a = np.zeros((3, 10, 10), np.float32)
    a[0, ::2] = 1.0  # half ones, half zeros: mean 0.5, std 0.5, so 0 -> 64 and 1 -> 192
    # a[1] stays 0: a channel dead after ReLU (std 0)
    a[2, 0, 0] = 1.0  # one bright pixel of 100: mean 0.01, std 0.0995; the rest -> 121, the pixel -> 765, clipped
    original = a.copy()
    values, dead, value_range = scale_to_uint8(a, "channel")
    assert dead.tolist() == [False, True, False] and value_range is None
    assert set(values[0, ::2].ravel()) == {192} and set(values[0, 1::2].ravel()) == {64}
    assert values[2, 0, 0] == 255 and set(values[2].ravel()) == {121, 255}
    np.testing.assert_array_equal(a, original)  # the caller's array is not edited in place
    assert channel_stats(a)["dead_channels"] == 1
    values, _, (lo, hi) = scale_to_uint8(a, "none")  # raw values: the layer's min to max
    assert (lo, hi) == (0.0, 1.0) and values.min() == 0 and values.max() == 255
    values, _, (lo, hi) = scale_to_uint8(a, "layer")  # one scale for the layer: lo and hi are what 0 and 255 stand for
    assert lo < 0 < hi < 1 and set(values.ravel()) == {99, 255}  # 0 and 1 (above hi: clipped)
    expected = np.clip((a - lo) / (hi - lo) * 255, 0, 255)
    assert np.abs(values - expected).max() <= 1  # to the rounding down to whole numbers
    assert scale_to_uint8(np.zeros((2, 4, 4)), "none")[0].max() == 0  # all dead: no 0/0
    with pytest.raises(ValueError, match="norm"):
        scale_to_uint8(a, "global")


@pytest.mark.parametrize("channels", [16, 20, 33])
def test_no_channel_is_dropped(channels):
    """Every channel is a tile: the grid holds ``channels`` tiles' worth of coloured pixels (viridis has no white,
    the background), whatever the number of rows."""
    rng = np.random.default_rng(0)
    one_tile = np.asarray(feature_grid(rng.random((1, 8, 8)), per_row=16))
    tile_pixels = one_tile.shape[0] * one_tile.shape[1]
    grid = np.asarray(feature_grid(rng.random((channels, 8, 8)), per_row=16))
    assert (grid != 255).any(axis=2).sum() == channels * tile_pixels
