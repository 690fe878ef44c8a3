import numpy as np
import pytest
import torch
from torch import nn

from catdog.model import CatDogCNN
from catdog.views.receptive import place_map, receptive_fields


def ones_proxy(model: nn.Module) -> nn.Sequential:
    """The same geometry with one channel and all-ones kernels: every pixel inside a position's field gets a
    non-zero gradient, so autograd draws the field independently of our arithmetic (pools become convs with the
    pool's kernel, stride, padding and dilation)."""
    layers = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            conv = nn.Conv2d(
                1,
                1,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=getattr(module, "dilation", 1),
                bias=False,
            )
            nn.init.ones_(conv.weight)
            layers.append(conv)
    return nn.Sequential(*layers)


def empirical_field(proxy: nn.Sequential, depth: int, size: int, i: int, j: int) -> tuple[float, float, int, int]:
    """Centre (y, x) and extent (h, w) of the input pixels that reach output (i, j) of layer ``depth``."""
    x = torch.ones(1, 1, size, size, requires_grad=True)
    out = proxy[: depth + 1](x)
    (grad,) = torch.autograd.grad(out[0, 0, i, j], x)
    ys, xs = np.nonzero(grad[0, 0].numpy())
    return (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2, ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


def test_catdog_fields_follow_from_the_layers():
    fields = receptive_fields(CatDogCNN())
    sizes = {name: g.size[0] for name, g in fields.items()}
    assert sizes == {
        "conv1": 3, "pool1": 4, "conv2": 8, "pool2": 10, "conv3": 18, "pool3": 22, "conv4": 38, "pool4": 46
    }  # fmt: skip
    assert [g.y.jump for g in fields.values()] == [1, 2, 2, 4, 4, 8, 8, 16]


def vgg11_features() -> nn.Module:
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["A"])  # vgg11(weights=None).features, without initialising its 120 M-weight classifier


def strided_padded_dilated() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(4, 4, (3, 3), padding="same"),
    )


@pytest.mark.parametrize("make, size", [(CatDogCNN, 150), (vgg11_features, 160), (strided_padded_dilated, 64)])
def test_a_one_hot_activation_lands_on_the_centre_of_its_field(make, size):
    """For every layer: the overlay draws a one-hot map's cell where autograd says the field's centre is."""
    model = make()
    fields = receptive_fields(model)
    proxy = ones_proxy(model)
    assert len(proxy) == len(fields)
    checked = 0
    for depth, (name, g) in enumerate(fields.items()):
        with torch.no_grad():
            h, w = proxy[: depth + 1](torch.zeros(1, 1, size, size)).shape[-2:]
        # an interior position, whose field lies inside the image (a clipped field's box would shift)
        i, j = h // 2, w // 2
        if g.y.span(i)[0] < 0 or g.y.span(i)[1] >= size:
            continue
        cy, cx, eh, ew = empirical_field(proxy, depth, size, i, j)
        assert (eh, ew) == g.size, name
        assert (g.y.centre(i), g.x.centre(j)) == (cy, cx), name
        one_hot = np.zeros((h, w))
        one_hot[i, j] = 1
        placed = place_map(one_hot, g, size, size)
        ys, xs = np.nonzero(placed == 1)
        # the drawn cell's centre, in pixel-index units, within one input pixel of the field's centre
        assert abs((ys.min() + ys.max()) / 2 - cy) <= 1 and abs((xs.min() + xs.max()) / 2 - cx) <= 1, name
        checked += 1
    assert checked == len(fields)


def test_fields_refuse_layers_after_an_adaptive_pool():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(4), nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match="after 1"):
        receptive_fields(model)
