import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

from catdog.hooks import ActivationRecorder
from catdog.model import CatDogCNN, load_keras_weights, max_pool_nhwc, summary

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


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_arrangements_give_the_same_outputs_and_gradients(channels_last):
    torch.manual_seed(0)
    plain = CatDogCNN()
    fast = CatDogCNN(relu_after_pool=True)
    fast.load_state_dict(plain.state_dict())
    x = torch.rand(4, 3, 150, 150)
    x[:2] -= 0.5  # negative inputs: whole pooling windows below zero
    y = torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    grads = []
    for model, inputs in ((plain, x), (fast, x.contiguous(memory_format=torch.channels_last) if channels_last else x)):
        logits = model(inputs)
        torch.nn.functional.binary_cross_entropy_with_logits(logits, y).backward()
        grads.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-6, atol=1e-6)
    for name in grads[0][1]:
        torch.testing.assert_close(grads[0][1][name], grads[1][1][name], rtol=1e-5, atol=1e-7, msg=name)
    with ActivationRecorder(fast) as recorder, torch.no_grad():
        fast(x)
    assert recorder.records["conv1"].min() == 0  # still the post-ReLU output, as the seed plots
    with ActivationRecorder(plain) as reference, torch.no_grad():
        plain(x)
    for name, record in reference.records.items():
        torch.testing.assert_close(recorder.records[name], record, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_scoring_max_pool_is_max_pool2d(dtype):
    for shape in [(2, 32, 148, 148), (3, 5, 15, 15), (1, 4, 7, 10), (1, 1, 2, 3)]:
        x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
        x[0, 0, 0, 0] = float("nan")
        out = max_pool_nhwc(x)
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, F.max_pool2d(x, 2), rtol=0, atol=0, equal_nan=True)
    pool = CatDogCNN(relu_after_pool=True).pool1  # with the ReLU of the conv before it
    x = torch.randn(2, 3, 9, 9).to(dtype).contiguous(memory_format=torch.channels_last)
    x[0, 0, :4, :4] = -x[0, 0, :4, :4].abs()  # windows of negative values only
    x[0, 1, :2, :2] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(pool(x), F.relu(F.max_pool2d(x, 2)), rtol=0, atol=0)


def test_dropout_and_schedule_options():
    model = CatDogCNN(dropout=0.5)
    assert [n for n, _ in model.named_children()][8:] == ["flatten", "dropout", "fc1", "fc2"]
    assert sum(p.numel() for p in model.parameters()) == 3_453_121
    from catdog.module import CatDogModule

    with pytest.raises(Exception, match="lr_schedule"):
        CatDogModule(lr_schedule="step")
