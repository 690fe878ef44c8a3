"""Augmentation, Keras ``ImageDataGenerator``-like: per image in the loader workers (``make_augment``, torchvision)
or per batch where the cache holds the images (``BatchAffine``, one ``affine_grid`` + ``grid_sample``), the same
distributions either way (tests/test_gpu_path.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import Compose, InterpolationMode, RandomAffine, RandomHorizontalFlip


def make_augment(
    hflip: bool = False, rotation: float = 0, shift: float = 0, zoom: float = 0, shear: float = 0
) -> Compose | None:
    """Keras-like ``ImageDataGenerator`` augmentation on the 150x150 tensor: random horizontal flip, rotation up
    to ``rotation`` degrees, shifts up to ``shift`` of the size, zoom in [1 - zoom, 1 + zoom], shear up to
    ``shear`` degrees (bilinear; uncovered pixels are black, where Keras repeats the edge). None when all are off."""
    steps = [RandomHorizontalFlip()] if hflip else []
    if rotation or shift or zoom or shear:
        steps.append(
            RandomAffine(
                degrees=rotation,
                translate=(shift, shift) if shift else None,
                scale=(1 - zoom, 1 + zoom) if zoom else None,
                shear=shear or None,
                interpolation=InterpolationMode.BILINEAR,
            )
        )
    return Compose(steps) if steps else None


class BatchAffine:
    """``make_augment``'s augmentation for a whole batch at once, on the batch's device (where the cache holds the
    images: ``CatDogDataModule``).

    ``sample`` draws each image's parameters from the distributions of ``RandomHorizontalFlip`` and
    ``RandomAffine.get_params`` (flip with p 0.5; angle in [-rotation, rotation]; shifts rounded to whole pixels,
    up to ``shift`` of the width and height; scale in [1 - zoom, 1 + zoom]; an x shear in [-shear, shear]) and
    turns them into the 2x3 matrices that ``torch.nn.functional.affine_grid`` takes (align_corners=False, as
    torchvision's tensor ``affine``). ``warp`` applies them in one ``affine_grid`` + ``grid_sample`` (bilinear) and
    blacks out what falls outside the image as ``RandomAffine(fill=0)`` does on a tensor (the bilinear weight of
    the inside, a mask torchvision gets from an extra channel, computed here from the grid).
    """

    def __init__(
        self, hflip: bool = False, rotation: float = 0, shift: float = 0, zoom: float = 0, shear: float = 0
    ) -> None:
        self.hflip, self.rotation, self.shift, self.zoom, self.shear = bool(hflip), rotation, shift, zoom, shear
        self.affine = bool(rotation or shift or zoom or shear)

    def parameters(self, n: int, size: tuple[int, int], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``n`` images' random parameters (float64 on the CPU): flip (0 or 1), angle and shear (degrees), tx and
        ty (whole pixels), scale; as ``RandomHorizontalFlip`` + ``RandomAffine.get_params`` draw them."""
        h, w = size
        u = torch.rand(6, n, generator=generator, dtype=torch.float64)

        def symmetric(row: int, bound: float) -> torch.Tensor:  # uniform in [-bound, bound]
            return (2 * u[row] - 1) * bound

        return {
            "flip": (u[0] < 0.5).double() if self.hflip else torch.zeros(n, dtype=torch.float64),
            "angle": symmetric(1, self.rotation),
            "tx": torch.round(symmetric(2, self.shift * w)),  # round half to even, as Python's round
            "ty": torch.round(symmetric(3, self.shift * h)),
            "scale": 1 + symmetric(4, self.zoom),
            "shear": symmetric(5, self.shear),
        }

    @staticmethod
    def theta(params: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """(n, 2, 3) float32 matrices for ``affine_grid(align_corners=False)``: for each output pixel, where to
        sample the input. torchvision's inverse affine matrix (``_get_inverse_affine_matrix``, centre of the image,
        no y shear) in pixels centred on the image, rescaled to the grid's [-1, 1] coordinates; a flip (which
        ``make_augment`` applies before the affine) negates the sampled x."""
        h, w = size
        rot, sx = torch.deg2rad(params["angle"]), torch.deg2rad(params["shear"])
        a, c = torch.cos(rot), torch.sin(rot)
        b = -torch.cos(rot) * torch.tan(sx) - torch.sin(rot)
        d = -torch.sin(rot) * torch.tan(sx) + torch.cos(rot)
        s, tx, ty = params["scale"], params["tx"], params["ty"]
        m0, m1, m3, m4 = d / s, -b / s, -c / s, a / s
        m2, m5 = -(m0 * tx + m1 * ty), -(m3 * tx + m4 * ty)
        sign = 1 - 2 * params["flip"]
        theta = torch.stack(
            [
                torch.stack([m0, m1 * h / w, 2 * m2 / w], -1) * sign[:, None],
                torch.stack([m3 * w / h, m4, 2 * m5 / h], -1),
            ],
            1,
        )
        return theta.float()

    def sample(self, n: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        """``theta(parameters(...))``: the matrices of ``n`` random draws."""
        return self.theta(self.parameters(n, size, generator), size)

    def warp(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """``x`` (N, C, H, W) float, each image transformed by its matrix in ``theta`` (N, 2, 3), on x's device."""
        theta = theta.to(x.device, torch.float32)
        if not self.affine:  # flips only: exact, no resampling
            return torch.where(theta[:, :1, :1, None] < 0, x.flip(-1), x)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # the bilinear weight that falls inside the image, per axis: 1 inside, 0 beyond half a pixel out
        h, w = x.shape[-2:]
        px = ((grid[..., 0] + 1) * w - 1) / 2
        py = ((grid[..., 1] + 1) * h - 1) / 2
        inside = torch.minimum(px + 1, w - px).clamp_(0, 1) * torch.minimum(py + 1, h - py).clamp_(0, 1)
        return out.mul_(inside[:, None])


class AugmentedIndices(Dataset):
    """The training images of the cache held on the device, with their augmentation drawn on the host and applied
    on the device: keys are ``(sample seed, index)`` pairs from ``EpochShuffle(seeded=True)``; each batch is
    ``CachedIndices``' (indices, labels, bad count) plus the images' affine matrices (``BatchAffine.sample``),
    drawn from a generator seeded with the batch's first sample seed. That seed depends on (seed, epoch, batch)
    alone, so a resumed run draws the same augmentation; the matrices travel to the device with the indices and
    ``CatDogDataModule.on_after_batch_transfer`` warps the gathered images there (training batches only: the
    validation and test loaders never carry matrices)."""

    def __init__(self, dataset: Dataset, augment: BatchAffine, size: tuple[int, int]) -> None:
        self.dataset, self.augment, self.size = dataset, augment, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        return self.dataset[key[1]]  # one image as the cache gives it, not augmented

    def __getitems__(self, keys: list[tuple[int, int]]) -> tuple[torch.Tensor, ...]:
        index, labels, skipped = self.dataset.__getitems__([i for _, i in keys])
        generator = torch.Generator().manual_seed(keys[0][0])
        return index, labels, skipped, self.augment.sample(len(index), self.size, generator)
