import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

from catdog.hooks import ActivationRecorder
from catdog.model import CatDogCNN, load_keras_weights, prediction, summary

SEED_SHAPES = {  # the Keras summary, NHWC -> NCHW
    "conv1": (32, 148, 148),
    "pool1": (32, 74, 74),
    "conv2": (64, 72, 72),
    "pool2": (64, 36, 36),
    "conv3": (128, 34, 34),
    "pool3": (128, 17, 17),
    "conv4": (128, 15, 15),
    "pool4": (128, 7, 7),
    "flatten": (6272,),
    "fc1": (512,),
    "fc2": (1,),
}
SEED_PARAMS = {"conv1": 896, "conv2": 18496, "conv3": 73856, "conv4": 147584, "fc1": 3211776, "fc2": 513}


def test_children_shapes_and_parameter_counts_match_the_seed():
    model = CatDogCNN()
    assert [name for name, _ in model.named_children()] == list(SEED_SHAPES)
    x = torch.zeros(2, 3, 150, 150)
    for name, child in model.named_children():
        x = child(x)
        assert tuple(x.shape[1:]) == SEED_SHAPES[name], name
        assert sum(p.numel() for p in child.parameters()) == SEED_PARAMS.get(name, 0), name
    assert sum(p.numel() for p in model.parameters()) == 3_453_121
    assert "Total params: 3,453,121" in summary(model)


def test_keras_initialisation_is_glorot_uniform_with_zero_biases():
    model = CatDogCNN()
    for module in (model.conv1, model.conv4, model.fc1):
        fan_in = module.weight[0].numel()
        fan_out = module.weight.shape[0] * module.weight[0, 0].numel()
        limit = np.sqrt(6 / (fan_in + fan_out))
        assert module.weight.abs().max() <= limit
        assert module.weight.abs().max() > 0.9 * limit  # uniform over the whole range, not a narrower default
        assert torch.all(module.bias == 0)
    with pytest.raises(ValueError):
        CatDogCNN(init="nonsense")


def keras_forward_nhwc(x: np.ndarray, weights: list[np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """An independent NumPy version of the Keras model in NHWC, with Keras's kernel layouts.
    Returns the sigmoid output and the 8 intermediate outputs the seed plots (NHWC)."""
    w = iter(weights)
    outputs = {}
    for i in range(1, 5):
        kernel, bias = next(w), next(w)
        windows = sliding_window_view(x, (3, 3), axis=(1, 2))  # (N, H-2, W-2, C, 3, 3)
        x = outputs[f"conv{i}"] = np.maximum(np.einsum("nhwcij,ijco->nhwo", windows, kernel) + bias, 0)
        n, h, wd, c = x.shape
        x = outputs[f"pool{i}"] = (
            x[:, : h // 2 * 2, : wd // 2 * 2].reshape(n, h // 2, 2, wd // 2, 2, c).max(axis=(2, 4))
        )
    x = x.reshape(len(x), -1)
    kernel, bias = next(w), next(w)
    x = np.maximum(x @ kernel + bias, 0)
    kernel, bias = next(w), next(w)
    return 1 / (1 + np.exp(-(x @ kernel + bias))), outputs


def test_ported_keras_weights_give_the_keras_output():
    rng = np.random.default_rng(0)
    shapes = [
        (3, 3, 3, 32),
        (32,),
        (3, 3, 32, 64),
        (64,),
        (3, 3, 64, 128),
        (128,),
        (3, 3, 128, 128),
        (128,),
        (6272, 512),
        (512,),
        (512, 1),
        (1,),
    ]
    # He-scaled kernels keep activations alive through the stack, so the outputs depend on the input
    weights = [
        rng.normal(0, np.sqrt(2 / np.prod(s[:-1])) if len(s) > 1 else 0.01, s).astype(np.float32) for s in shapes
    ]
    x = rng.random((2, 150, 150, 3), dtype=np.float32)
    x[1] *= np.linspace(0, 1, 150, dtype=np.float32)[:, None, None]  # a different picture: dark at the top
    expected, intermediates = keras_forward_nhwc(x.astype(np.float64), [w.astype(np.float64) for w in weights])

    model = CatDogCNN()
    load_keras_weights(model, weights)
    with ActivationRecorder(model) as recorder, torch.no_grad():
        got = torch.sigmoid(model(torch.from_numpy(x).permute(0, 3, 1, 2))).numpy()
    assert expected.std() > 0.01  # the check means something only if outputs differ between inputs
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # the recorder's arrays are the seed's 8 plotted outputs (NHWC there, NCHW here)
    assert list(recorder.records) == list(intermediates)
    for name, keras_nhwc in intermediates.items():
        ours = recorder.records[name].permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(ours, keras_nhwc, rtol=1e-4, atol=1e-5 * np.abs(keras_nhwc).max(), err_msg=name)


def test_conv_layers_output_after_relu_and_pools_are_plain_max_pools():
    """As the seed's Keras layers: a hook on conv1 sees conv1's output after ReLU (what the seed plots), and each
    pool is a plain 2x2 max-pool; nothing in the network depends on how it is called."""
    torch.manual_seed(0)
    model = CatDogCNN(input_size=(64, 64))
    x = torch.rand(2, 3, 64, 64) - 0.5
    with ActivationRecorder(model, ["conv1", "pool1"]) as recorder, torch.no_grad():
        model(x)
    pre_relu = F.conv2d(x, model.conv1.weight, model.conv1.bias)
    assert pre_relu.min() < 0
    torch.testing.assert_close(recorder.records["conv1"], F.relu(pre_relu))
    assert type(model.pool1) is torch.nn.MaxPool2d and model.pool1.kernel_size == 2
    torch.testing.assert_close(recorder.records["pool1"], F.max_pool2d(F.relu(pre_relu), 2))


def test_prediction_is_one_record_from_the_logit():
    assert prediction(0.0) == {"label": "dog", "probability": 0.5, "p_dog": 0.5}
    dog, cat = prediction(torch.tensor(3.0)), prediction(-3.0)
    assert dog["label"] == "dog" and dog["probability"] == pytest.approx(0.952574, abs=1e-6) == dog["p_dog"]
    assert cat["label"] == "cat" and cat["probability"] == pytest.approx(0.952574, abs=1e-6)
    assert cat["p_dog"] == pytest.approx(1 - 0.952574, abs=1e-6)


def test_dropout_and_schedule_options():
    model = CatDogCNN(dropout=0.5)
    assert [n for n, _ in model.named_children()][8:] == ["flatten", "dropout", "fc1", "fc2"]
    assert sum(p.numel() for p in model.parameters()) == 3_453_121
    from catdog.module import CatDogModule

    with pytest.raises(Exception, match="lr_schedule"):
        CatDogModule(lr_schedule="step")
