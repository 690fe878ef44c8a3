import pytest
import torch
import torch.nn.functional as F
from torch import nn

from catdog.hooks import ActivationRecorder, record_activations
from catdog.model import CatDogCNN

LAYERS = ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "conv4", "pool4"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CatDogCNN().eval()


def test_records_every_conv_and_pool_in_order_with_seed_shapes(model):
    x = torch.rand(2, 3, 150, 150)
    records = record_activations(model, x)
    assert list(records) == LAYERS
    assert records["conv1"].shape == (2, 32, 148, 148) and records["pool4"].shape == (2, 128, 7, 7)
    assert all(r.device.type == "cpu" and not r.requires_grad for r in records.values())


def test_conv_records_are_post_relu_and_equal_the_plain_computation(model):
    x = torch.rand(1, 3, 150, 150)
    records = record_activations(model, x, layers=["conv*"])
    assert list(records) == ["conv1", "conv2", "conv3", "conv4"]
    expected = F.relu(F.conv2d(x, model.conv1.weight, model.conv1.bias))
    torch.testing.assert_close(records["conv1"], expected)
    assert records["conv2"].min() >= 0
    expected2 = F.relu(F.conv2d(F.max_pool2d(expected, 2), model.conv2.weight, model.conv2.bias))
    torch.testing.assert_close(records["conv2"], expected2)


def test_no_recorder_no_change_and_handles_removed(model):
    x = torch.rand(1, 3, 150, 150)
    with torch.no_grad():
        before = model(x)
        with ActivationRecorder(model) as recorder:
            during = model(x)
            assert all(len(m._forward_hooks) == 1 for _, m in recorder.modules)
        after = model(x)
    torch.testing.assert_close(before, during)
    torch.testing.assert_close(before, after)
    assert all(not m._forward_hooks for m in model.modules())


def test_handles_removed_when_forward_raises(model):
    with pytest.raises(RuntimeError):
        with ActivationRecorder(model):
            model(torch.rand(1, 3, 20, 20))  # too small for fc1: raises inside the forward pass
    assert all(not m._forward_hooks for m in model.modules())


def test_records_are_copies_not_views():
    """An in-place ReLU after a conv must not change what was recorded for the conv."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
    with torch.no_grad():
        net[0].weight.fill_(-1.0)
        net[0].bias.zero_()
    x = torch.ones(1, 1, 4, 4)
    with ActivationRecorder(net, device=None) as recorder:
        net(x)
    assert torch.all(recorder.records["0"] == -1)  # the pre-ReLU conv output, untouched by the in-place ReLU


def test_with_gradients_on_and_layer_globs(model):
    x = torch.rand(1, 3, 150, 150, requires_grad=True)
    with ActivationRecorder(model, layers="pool*") as recorder:
        model(x).sum().backward()
    assert list(recorder.records) == ["pool1", "pool2", "pool3", "pool4"]
    assert x.grad is not None and not recorder.records["pool1"].requires_grad
    with pytest.raises(KeyError, match="conv9"):
        ActivationRecorder(model, layers=["conv9"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_records_land_on_the_cpu(model):
    cuda_model = CatDogCNN().cuda().eval()
    records = record_activations(cuda_model, torch.rand(1, 3, 150, 150, device="cuda"))
    assert all(r.device.type == "cpu" for r in records.values())
