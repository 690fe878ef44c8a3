import numpy as np
import pytest

from catdog.views.plots import SEPARATOR, channel_stats, feature_grid, scale_to_uint8, tile_scale


def test_seed_standardisation_and_dead_channels_without_nan():
    rng = np.random.default_rng(0)
    a = rng.random((3, 10, 10)).astype(np.float32)
    a[1] = 0  # dead after ReLU
    original = a.copy()
    values, dead, value_range = scale_to_uint8(a, "channel")
    assert dead.tolist() == [False, True, False] and value_range is None
    seed = np.clip((a[0] - a[0].mean()) / a[0].std() * 64 + 128, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(values[0], seed)
    np.testing.assert_array_equal(a, original)  # the caller's array is not edited in place
    assert channel_stats(a)["dead_channels"] == 1
    for norm in ("layer", "none"):
        values, dead, (lo, hi) = scale_to_uint8(a, norm)
        assert np.isfinite([lo, hi]).all() and lo < hi
    assert scale_to_uint8(np.zeros((2, 4, 4)), "none")[0].max() == 0  # all dead: no 0/0
    with pytest.raises(ValueError, match="norm"):
        scale_to_uint8(a, "global")


@pytest.mark.parametrize("channels", [1, 16, 20, 33])
def test_no_channel_is_dropped(channels):
    image = np.asarray(feature_grid(np.random.default_rng(0).random((channels, 8, 8)), per_row=16))
    k = tile_scale(8)
    cols, rows = min(16, channels), -(-channels // 16)
    assert image.shape[:2] == (rows * (8 * k + SEPARATOR) - SEPARATOR, cols * (8 * k + SEPARATOR) - SEPARATOR)
    last_row = image[-8 * k :]
    filled = (channels - 1) % 16 + 1
    assert not np.all(last_row[:, (filled - 1) * (8 * k + SEPARATOR)] == 255)  # the last channel is drawn
