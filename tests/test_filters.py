"""Feature visualisation (catdog.views.filters): seeded, the right shapes, the objective really climbs, the cache and
the patterns shipped with the shipped weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from catdog.model import CatDogCNN
from catdog.views import filters
from catdog.views.activations import filters_page
from catdog.weights import load_weights, weights_sha256


@pytest.fixture(autouse=True)
def one_thread():
    """These are small problems: one thread spares OpenMP's barriers, which cost the most on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small() -> CatDogCNN:
    torch.manual_seed(0)
    return CatDogCNN(input_size=(64, 64)).eval()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "catdog" / "patterns"


def test_canvases_are_the_receptive_fields_and_the_input(small):
    assert [filters.canvas_size(small, name) for name in filters.conv_layers(small)] == [
        (3, 3),
        (8, 8),
        (18, 18),
        (38, 38),
    ]
    assert filters.canvas_size(small, filters.CLASS_LAYER) == (64, 64)
    for wrong in ("pool1", "fc1", "nope"):
        with pytest.raises(KeyError, match="conv1, conv2, conv3, conv4, output"):
            filters.patterns(small, wrong, steps=1)
    with pytest.raises(ValueError, match="input size"):
        filters.patterns(small, filters.CLASS_LAYER, size=(32, 32), steps=1)


def test_seeded_shapes_and_the_model_left_as_it_was(small):
    small.train()
    first = filters.patterns(small, "conv2", steps=6, seed=3)
    assert first.shape == (64, 8, 8, 3) and first.dtype == np.uint8
    assert np.array_equal(first, filters.patterns(small, "conv2", steps=6, seed=3))
    assert not np.array_equal(first, filters.patterns(small, "conv2", steps=6, seed=4))
    assert filters.patterns(small, "conv3", steps=1).shape == (128, 18, 18, 3)
    assert small.training and all(p.requires_grad for p in small.parameters())
    assert filters.class_patterns(small, steps=2).shape == (2, 64, 64, 3)


def test_the_search_raises_each_objective_far_above_its_start(small):
    def centre(images: np.ndarray) -> torch.Tensor:  # conv2's pre-activation, channel c on image c
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            return filters.pre_activation(small, "conv2", x)[range(64), range(64), 0, 0]

    start = centre(filters.patterns(small, "conv2", steps=0))  # the seed's first image: near grey
    found = filters.patterns(small, "conv2", steps=80)
    end = centre(found)
    typical = start.abs().mean()
    assert (end - start > 3 * typical).float().mean() > 0.95 and end.mean() > 4 * typical
    assert np.allclose(filters.responses(small, "conv2", found), end.clamp_min(0).numpy(), rtol=1e-5, atol=1e-6)
    # the output: "most dog" raises the logit, "most cat" lowers it (responses gives minus the logit for it)
    before = filters.responses(small, filters.CLASS_LAYER, filters.class_patterns(small, steps=0))
    after = filters.responses(small, filters.CLASS_LAYER, filters.class_patterns(small, steps=20))
    assert np.all(after > before + 10 * np.abs(before).max())


def test_a_shift_is_found_again_at_another_position(small):
    images = filters.patterns(small, "conv1", steps=4)
    n = len(images)
    still = filters.responses(small, "conv1", images, np.zeros((n, 2), dtype=int))
    moved = filters.responses(small, "conv1", images, np.tile([3, -5], (n, 1)))  # conv1's step is 1 px
    assert np.allclose(still, moved, rtol=1e-5, atol=1e-6) and np.all(
        still >= filters.responses(small, "conv1", images)
    )
    with pytest.raises(ValueError, match="8 pixels"):
        filters.responses(small, "conv1", images, np.full((n, 2), 9))


def test_the_cache_keeps_patterns_and_recomputes_a_damaged_file(small, cache, monkeypatch):
    fingerprint = weights_sha256(small.state_dict())
    made = filters.cached_patterns(small, "conv2", steps=3)
    (path,) = cache.glob("*.npy")
    assert path.name.startswith(fingerprint[:32]) and np.array_equal(np.load(path), made)
    real = filters._optimise
    monkeypatch.setattr(filters, "_optimise", lambda *a, **k: pytest.fail("recomputed a cached pattern"))
    assert np.array_equal(filters.cached_patterns(small, "conv2", fingerprint, steps=3), made)
    assert filters.cached_patterns(small, "conv2", fingerprint, compute=False, steps=4) is None  # other settings
    for damage in (b"not a numpy file", None):
        if damage is None:  # a readable file of the wrong shape: another layer's
            np.save(path, np.zeros((3, 8, 8, 3), np.uint8))
        else:
            path.write_bytes(damage)
        assert filters.cached_patterns(small, "conv2", fingerprint, compute=False, steps=3) is None
        monkeypatch.setattr(filters, "_optimise", real)
        assert np.array_equal(filters.cached_patterns(small, "conv2", fingerprint, steps=3), made)
        assert np.array_equal(np.load(path), made)


def test_the_shipped_weights_ship_with_their_patterns(cache, monkeypatch):
    model = load_weights("pretrained").model()
    assert filters.SHIPPED.stat().st_size <= 1_000_000
    with np.load(filters.SHIPPED, allow_pickle=False) as shipped:
        assert str(shipped["fingerprint"]) == weights_sha256(model.state_dict())
        for layer in [*filters.conv_layers(model), filters.CLASS_LAYER]:
            assert str(shipped[f"key_{layer}"]) == filters.settings_key(filters.canvas_size(model, layer)), layer
    # found with no data, no compute and an empty cache; other weights do not get them
    monkeypatch.setattr(filters, "_optimise", lambda *a, **k: pytest.fail("computed a shipped pattern"))
    for layer, channels in (("conv1", 32), ("conv4", 128), (filters.CLASS_LAYER, 2)):
        found = filters.cached_patterns(model, layer, compute=False)
        assert found is not None and found.shape[0] == channels
    assert filters_page(model, filters.CLASS_LAYER, 16, None, None, None).size[0] > 2 * 150
    assert filters_page(model, "conv1", 16, None, None, None).size[0] >= 16 * 48
    with torch.no_grad():
        model.conv1.bias.add_(0.01)
    assert filters.cached_patterns(model, "conv1", compute=False) is None and not cache.exists()


def test_the_shipped_patterns_are_what_the_method_draws():
    model = load_weights("pretrained").model()
    with np.load(filters.SHIPPED, allow_pickle=False) as shipped:
        for layer in ("conv1", "conv2"):
            again = filters.patterns(model, layer).astype(int)
            # the same seed; a CPU with other threads may round sums differently, so nearly, not bitwise
            assert np.abs(again - shipped[layer]).mean() < 1, layer
