"""catdog.fast: the faster arrangement computes what the plain network computes, with the plain network's parameters."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from catdog.fast import FastCatDogCNN, IndexFreeMaxPool2d, fast, max_pool_nhwc, recordable, relu_max_pool
from catdog.hooks import ActivationRecorder
from catdog.model import CatDogCNN
from catdog.module import KerasRMSprop


def networks(input_size=(150, 150), dropout: float = 0.0) -> tuple[CatDogCNN, CatDogCNN, FastCatDogCNN]:
    """A plain network, an untouched copy of it (the reference) and ``fast`` of the first."""
    torch.manual_seed(0)
    plain = CatDogCNN(dropout=dropout, input_size=input_size)
    return plain, copy.deepcopy(plain), fast(plain)


def batch(input_size=(150, 150), n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 3, *input_size, generator=torch.Generator().manual_seed(1))
    x[:2] -= 0.5  # negative inputs: whole pooling windows below zero after the first conv
    return x, torch.tensor([[0.0], [1.0], [1.0], [0.0]])[:n]


@pytest.mark.parametrize(
    "input_size, dropout, layout",
    [
        ((150, 150), 0.0, torch.contiguous_format),
        ((150, 150), 0.0, torch.channels_last),
        ((64, 80), 0.5, torch.contiguous_format),  # another size, with dropout (training mode)
    ],
)
def test_fast_gives_the_plain_outputs_and_gradients(input_size, dropout, layout):
    plain, reference, runner = networks(input_size, dropout)
    x, y = batch(input_size)
    results = []
    for net, inputs in ((reference, x), (runner, x.contiguous(memory_format=layout))):
        torch.manual_seed(2)  # the same dropout mask for both
        logits = net(inputs)
        F.binary_cross_entropy_with_logits(logits, y).backward()
        grads = {name: p.grad for name, p in zip(dict(plain.named_parameters()), net.parameters(), strict=True)}
        results.append((logits.detach(), grads))
    assert results[0][0].std() > 0  # the outputs depend on the input, so equal outputs mean something
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-6, atol=1e-6)
    for name, grad in results[0][1].items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # the gradients through fast() landed on the plain network's parameters
    assert all(p.grad is not None for p in plain.parameters())


def test_fast_shares_the_parameters_and_trains_the_plain_network():
    plain, reference, runner = networks()
    assert list(runner.parameters()) == list(plain.parameters())  # the same Parameter objects, in the same order
    assert all(a is b for a, b in zip(runner.parameters(), plain.parameters(), strict=True))
    assert plain.conv1.weight.is_contiguous(memory_format=torch.channels_last)  # laid out once, values kept
    torch.testing.assert_close(plain.conv1.weight, reference.conv1.weight, rtol=0, atol=0)
    optimizer = KerasRMSprop(plain.parameters())  # an optimizer over the plain network, as CatDogModule has
    x, y = batch()
    F.binary_cross_entropy_with_logits(runner(x), y).backward()
    optimizer.step()
    assert not torch.equal(plain.conv1.weight, reference.conv1.weight)  # the step changed the plain network
    with torch.no_grad():
        torch.testing.assert_close(runner(x), plain(x), rtol=1e-6, atol=1e-6)  # and fast() sees the change


def test_fast_scores_as_the_plain_network_without_gradients():
    """No gradient on a CPU: index-free pooling (float32, exact) and the int16 trick (bfloat16) take over."""
    plain, reference, runner = networks()
    x, _ = batch()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(runner(x), reference(x), rtol=1e-6, atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = reference(x).float()
            autocast_fast = runner(x).float()
        bf16 = copy.deepcopy(runner).to(torch.bfloat16)  # what catdog.scoring.Scorer scores with bf16-mixed
        scored = bf16(x.to(torch.bfloat16)).float()
    assert torch.equal(autocast_fast, scored)  # bfloat16 weights are what autocast casts the weights to
    # the same arithmetic but for the convolutions' memory layout (their sums' order): bfloat16's rounding apart
    torch.testing.assert_close(scored, autocast, rtol=0.02, atol=5e-4)
    assert next(runner.parameters()).dtype == torch.float32  # the copy, not the network, was cast


def test_fast_records_nothing_and_leaves_recording_to_the_plain_network():
    plain, _, runner = networks()
    x, _ = batch(n=1)
    with ActivationRecorder(plain) as recorder, torch.no_grad():
        runner(x)
        assert recorder.records == {}  # fast() calls no layer's hooks
        logit = plain(x)
    assert recorder.records["conv1"].min() == 0  # the plain network: conv1 after its ReLU, as the seed plots
    with torch.no_grad():
        torch.testing.assert_close(runner(x), logit, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_index_free_pooling_is_max_pool2d(dtype):
    for shape in [(2, 32, 148, 148), (3, 5, 15, 15), (1, 4, 7, 10), (1, 1, 2, 3)]:
        x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
        x[0, 0, 0, 0] = float("nan")
        out = max_pool_nhwc(x)
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, F.max_pool2d(x, 2), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grad", [False, True])
def test_relu_max_pool_is_the_seed_relu_then_max_pool_on_every_path(dtype, grad):
    x = torch.randn(2, 3, 9, 11).to(dtype)
    x[0, 0, :4, :4] = -x[0, 0, :4, :4].abs()  # windows of negative values only
    x[0, 1, :2, :2] = 0.0
    x[1, 2, :2, :2] = -0.0  # bfloat16 -0.0 reads as the smallest int16
    expected = F.max_pool2d(F.relu(x), 2)
    for layout in (torch.contiguous_format, torch.channels_last):
        with torch.set_grad_enabled(grad):
            out = relu_max_pool(x.clone().contiguous(memory_format=layout))
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_fast_refuses_a_network_it_cannot_rearrange():
    model = CatDogCNN(input_size=(64, 64))
    model.pool2 = nn.AvgPool2d(2)  # replaces the child in place, keeping its position
    with pytest.raises(ValueError, match="2x2 max-pool after conv2"):
        fast(model)
    with pytest.raises(ValueError, match="rearranges a CatDogCNN"):
        fast(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2)))  # a ReLU it cannot move
    with pytest.raises(ValueError, match="rearranges a CatDogCNN"):
        fast(nn.Linear(3, 1))
    late = CatDogCNN(input_size=(64, 64))
    late.add_module("extra", nn.MaxPool2d(1))
    with pytest.raises(ValueError, match="extra is not a ConvReLU"):
        fast(late)


def test_recordable_records_what_the_plain_model_records_with_index_free_pools():
    """The atlas and the projector record through ``recordable(model)``: the same layers and names, hooks firing on
    every conv (after its ReLU) and pool, the same values as the plain model's."""
    torch.manual_seed(0)
    model = CatDogCNN(input_size=(64, 64)).eval()
    x = torch.rand(3, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    fast_layers = recordable(model)
    assert [n for n, _ in fast_layers.named_children()] == [n for n, _ in model.named_children()]
    assert isinstance(fast_layers.pool1, IndexFreeMaxPool2d) and fast_layers.conv1 is model.conv1
    with ActivationRecorder(model) as plain, torch.no_grad():
        expected = model(x)
    with ActivationRecorder(fast_layers) as recorded, torch.no_grad():
        got = fast_layers(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert list(recorded.records) == list(plain.records)
    for name, record in plain.records.items():
        torch.testing.assert_close(recorded.records[name], record, rtol=0, atol=1e-6)
