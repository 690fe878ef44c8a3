"""The GPU levers, on CPU tensors: augmentation of whole batches where the cache holds the images (``BatchAffine``,
``data.cache=true``), ``model.compile``, metrics summed on the device and logged once an epoch, the TF32 switch."""

import pytest
import pytorch_lightning as pl
import torch
import torchvision.transforms.functional as tv1
import torchvision.transforms.v2.functional as tv2
from pytorch_lightning.callbacks import TQDMProgressBar
from torchvision.transforms import InterpolationMode, RandomAffine

from catdog import CatDogError
from catdog.data import CatDogDataModule
from catdog.data.augment import AugmentedIndices, BatchAffine
from catdog.data.cache import CachedIndices
from catdog.data.loading import SeededSamples
from catdog.module import CatDogModule, RunningLossBar, set_tf32
from tests.conftest import stop_workers

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
BOOK = {"hflip": True, "rotation": 40, "shift": 0.2, "zoom": 0.2, "shear": 10}  # experiment=best's augmentation
QUIET = dict(logger=False, enable_checkpointing=False, enable_model_summary=False)


def fixed_parameters(n: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Drawn once, then the flips set by hand: both flipped and unflipped images, the largest angles and shifts."""
    params = BatchAffine(**BOOK).parameters(n, size, torch.Generator().manual_seed(1))
    params["flip"] = torch.tensor([0.0, 1.0] * (n // 2), dtype=torch.float64)
    params["angle"][:2] = torch.tensor([40.0, -40.0], dtype=torch.float64)
    params["tx"][:2] = torch.tensor([round(0.2 * size[1]), -round(0.2 * size[1])], dtype=torch.float64)
    return params


def torchvision_affine(functional, image: torch.Tensor, params: dict[str, torch.Tensor], i: int, **fill):
    """What make_augment does to image ``i``: flip (RandomHorizontalFlip), then RandomAffine's affine."""
    image = image.flip(-1) if params["flip"][i] else image
    return functional.affine(
        image,
        angle=float(params["angle"][i]),
        translate=[int(params["tx"][i]), int(params["ty"][i])],
        scale=float(params["scale"][i]),
        shear=[float(params["shear"][i]), 0.0],
        interpolation=InterpolationMode.BILINEAR,
        **fill,
    )


@pytest.mark.parametrize("size", [(150, 150), (40, 56)])
def test_batched_warp_equals_torchvision_affine_image_by_image(size):
    torch.manual_seed(0)
    x = torch.rand(6, 3, *size)
    params = fixed_parameters(6, size)
    augment = BatchAffine(**BOOK)
    warped = augment.warp(x, augment.theta(params, size))
    assert warped.shape == x.shape and warped.dtype == torch.float32
    for i in range(len(x)):
        # today's worker path: torchvision's RandomAffine on a tensor fills with 0 through a mask channel
        today = torchvision_affine(tv1, x[i], params, i, fill=[0.0, 0.0, 0.0])
        assert (warped[i] - today).abs().max() < 1e-4, i
        # transforms.v2's affine, away from the borders of the sampled image (where v2 leaves the partial weights)
        v2 = torchvision_affine(tv2, x[i], params, i)
        inside = torchvision_affine(tv2, torch.ones(1, *size), params, i) > 1 - 1e-6
        assert inside.float().mean() > 0.3
        assert (warped[i] - v2).abs()[inside.expand_as(v2)].max() < 1e-3, i
        assert not torch.allclose(warped[i], x[i], atol=0.05)  # it did move


def test_flips_alone_are_exact_and_half_of_the_images():
    x = torch.rand(400, 3, 8, 10)
    augment = BatchAffine(hflip=True)
    theta = augment.sample(len(x), (8, 10), torch.Generator().manual_seed(0))
    out = augment.warp(x, theta)
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert bool((flipped ^ kept).all()) and 150 < int(flipped.sum()) < 250


def test_parameters_follow_random_affine_distributions():
    size = (150, 120)  # height, width: RandomAffine shifts up to 0.2 * width in x and 0.2 * height in y
    n = 20000
    ours = BatchAffine(**BOOK).parameters(n, size, torch.Generator().manual_seed(0))
    reference = RandomAffine(degrees=40, translate=(0.2, 0.2), scale=(0.8, 1.2), shear=10)
    torch.manual_seed(0)
    draws = [reference.get_params(reference.degrees, reference.translate, reference.scale, reference.shear, [120, 150])]
    draws += [
        reference.get_params(reference.degrees, reference.translate, reference.scale, reference.shear, [120, 150])
        for _ in range(3999)
    ]
    theirs = {
        "angle": torch.tensor([d[0] for d in draws], dtype=torch.float64),
        "tx": torch.tensor([d[1][0] for d in draws], dtype=torch.float64),
        "ty": torch.tensor([d[1][1] for d in draws], dtype=torch.float64),
        "scale": torch.tensor([d[2] for d in draws], dtype=torch.float64),
        "shear": torch.tensor([d[3][0] for d in draws], dtype=torch.float64),
    }
    assert all(d[3][1] == 0 for d in draws)  # a single shear number shears along x only
    bounds = {"angle": (-40, 40), "tx": (-24, 24), "ty": (-30, 30), "scale": (0.8, 1.2), "shear": (-10, 10)}
    for name, (low, high) in bounds.items():
        value = ours[name]
        assert low <= value.min() and value.max() <= high, name
        assert value.min() < low + 0.05 * (high - low) and value.max() > high - 0.05 * (high - low), name  # spans it
        quantiles = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
        torch.testing.assert_close(
            torch.quantile(value, quantiles), torch.quantile(theirs[name], quantiles), atol=0.04 * (high - low), rtol=0
        )
    assert abs(float(ours["angle"].mean())) < 1 and abs(float(ours["scale"].mean()) - 1) < 0.005
    assert torch.equal(ours["tx"], ours["tx"].round()) and torch.equal(ours["ty"], ours["ty"].round())
    assert set(ours["tx"].unique().tolist()) == set(range(-24, 25))  # every whole shift, the ends included
    assert abs(float(ours["flip"].mean()) - 0.5) < 0.02 and set(ours["flip"].unique().tolist()) == {0.0, 1.0}


def held_and_augmented(image_tree, **settings) -> CatDogDataModule:
    dm = CatDogDataModule(
        root=str(image_tree), source=None, num_workers=0, batch_size=8, cache=True, augment=BOOK, **settings
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def transferred(dm: CatDogDataModule, loader) -> list[tuple[torch.Tensor, ...]]:
    return [dm.on_after_batch_transfer(batch, 0) for batch in loader]


@pytest.mark.slow
def test_device_augmentation_is_drawn_per_batch_from_seed_epoch_and_batch(image_tree, forked_pool):
    dm = held_and_augmented(image_tree, val_fraction=0.25)
    assert dm.pixels is not None and isinstance(dm.train_set.dataset, CachedIndices)  # the pictures, not augmented
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    first = transferred(dm, loader)
    loader.sampler.set_epoch(0)
    again = transferred(dm, loader)
    loader.sampler.set_epoch(1)
    other = transferred(dm, loader)
    assert len(first) == 5 and all(len(b) == 3 for b in first)  # the matrices are used up on the device
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(first[0][0], other[0][0])
    x = first[0][0]
    assert x.shape == (8, 3, 150, 150) and x.is_contiguous(memory_format=torch.channels_last)
    assert 0 <= x.min() and x.max() <= 1

    # the same batch unaugmented: the gathered pixels differ, and warping them with the carried matrices gives x
    raw_loader = dm._loader(dm.train_set, shuffle=True)
    raw_loader.sampler.set_epoch(1)
    raw = next(iter(raw_loader))  # (indices, labels, bad, matrices) as the loader hands them to the device
    plain = dm.pixels[raw[0]].permute(0, 3, 1, 2).float() / 255
    assert raw[3].shape == (8, 2, 3) and not torch.allclose(plain, other[0][0], atol=0.05)
    torch.testing.assert_close(dm.batch_augment.warp(plain, raw[3]), other[0][0])

    # resumed after 2 batches (another loader, as a restarted run makes): the rest of the epoch, the same images
    resumed = held_and_augmented(image_tree, val_fraction=0.25)
    resumed.shuffle_seed = dm.shuffle_seed
    rest_loader = resumed.train_dataloader()
    rest_loader.load_state_dict({"epoch": 0, "batches": 2})
    rest_loader.sampler.set_epoch(0)
    rest = transferred(resumed, rest_loader)
    assert len(rest) == 3
    for a, b in zip(rest, first[2:], strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

    # validation and test batches are never augmented: the cached pixels as they are
    for split in (dm.val_set, dm.test_set):
        for index, y, bad in dm._loader(split, shuffle=False):
            x, y2, _ = dm.on_after_batch_transfer((index, y, bad), 0)
            assert torch.equal(x, dm.pixels[index].permute(0, 3, 1, 2).float().mul_(1 / 255))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_augmentation_runs_where_the_pictures_are(image_tree, forked_pool, device):
    """data.cache alone decides: held on the training device (a GPU, or the RAM of a CPU run), whole batches are
    augmented there; without the cache, each picture in the loader workers."""
    dm = CatDogDataModule(root=str(image_tree), source=None, num_workers=0, batch_size=8, cache=True, augment=BOOK)
    dm.trainer = pl.Trainer(accelerator=device, devices=1, **QUIET)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert dm.pixels.device.type == device and isinstance(loader.dataset, AugmentedIndices)
    assert loader.num_workers == 0 and len(next(iter(loader))) == 4  # indices, labels, bad count, matrices
    x, y, _ = dm.on_after_batch_transfer([t.to(device) for t in next(iter(loader))], 0)  # as Lightning moves it
    assert x.device.type == y.device.type == device and x.shape == (8, 3, 150, 150)

    files = CatDogDataModule(root=str(image_tree), source=None, num_workers=1, batch_size=8, augment=BOOK)
    files.setup("fit")
    loader = files.train_dataloader()
    assert files.pixels is None and isinstance(loader.dataset, SeededSamples) and loader.num_workers == 1
    x, y, skipped = files.on_after_batch_transfer(next(iter(loader)), 0)
    stop_workers(loader)
    assert x.shape == (8, 3, 150, 150) and y.shape == (8, 1) and skipped == 0


@pytest.mark.slow
def test_a_fit_augments_on_the_device_and_logs_once_an_epoch(image_tree, monkeypatch, forked_pool):
    calls = []
    log = CatDogModule.log
    monkeypatch.setattr(CatDogModule, "log", lambda self, name, *a, **k: calls.append(name) or log(self, name, *a, **k))
    dm = CatDogDataModule(root=str(image_tree), source=None, batch_size=8, cache=True, augment=BOOK, num_workers=1)
    module = CatDogModule(fast=True)
    limits = dict(max_epochs=2, limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=0)
    trainer = pl.Trainer(**limits, enable_progress_bar=False, **QUIET)
    trainer.fit(module, datamodule=dm)
    assert dm.pixels is not None
    assert trainer.callback_metrics["train_loss"].isfinite() and 0 <= trainer.callback_metrics["train_acc"] <= 1
    # 2 training and 2 validation steps an epoch, but each metric logged once an epoch
    per_epoch = ["train_loss", "train_acc", "train_skipped_files", "val_loss", "val_acc", "val_skipped_files"]
    assert sorted(calls) == sorted(per_epoch * 2)


class Recorder(CatDogModule):
    """Keeps every step's logits and loss, to check the epoch metrics against."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: dict[str, list] = {"train": [], "val": []}

    def network(self, x):
        logits = super().network(x)
        self.seen["train" if self.training else "val"].append(logits.detach().clone())
        return logits


def test_epoch_metrics_are_the_means_over_the_epoch_and_accuracy_reads_logits():
    torch.manual_seed(0)
    x = torch.rand(50, 3, 64, 64)
    y = (x[:, 0].mean((1, 2)) > x[:, 2].mean((1, 2))).float()[:, None]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=20)  # 20, 20, 10
    module = Recorder(lr=1e-3, input_size=(64, 64))
    history = []

    class Epochs(pl.Callback):  # what TrainingCurves reads, at the same moment
        def on_train_epoch_end(self, trainer, pl_module):
            history.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    trainer = pl.Trainer(max_epochs=1, num_sanity_val_steps=0, enable_progress_bar=False, callbacks=[Epochs()], **QUIET)
    trainer.fit(module, loader, loader)
    (epoch,) = history
    ys = [y[:20], y[20:40], y[40:]]
    for stage in ("train", "val"):
        logits = module.seen[stage]
        losses = [torch.nn.functional.binary_cross_entropy_with_logits(lo, t) for lo, t in zip(logits, ys, strict=True)]
        mean = sum(loss * len(t) for loss, t in zip(losses, ys, strict=True)) / 50
        right = sum(int(((torch.sigmoid(lo) > 0.5) == (t > 0.5)).sum()) for lo, t in zip(logits, ys, strict=True))
        assert epoch[f"{stage}_acc"] == pytest.approx(right / 50, abs=1e-7), stage
        if stage == "val":  # the training loss is taken before each step's update: recomputed logits differ
            assert epoch["val_loss"] == pytest.approx(float(mean), rel=1e-6)
    # a batch whose logits all lie in [0, 1] is still read as logits (sigmoid > 0.5: all dogs), unlike torchmetrics
    metric = module.epoch_metrics["test_acc"]
    metric.update(torch.tensor([[0.03], [0.05]]), torch.tensor([[1.0], [0.0]]))
    assert float(metric.compute()) == 0.5


def test_progress_bar_reads_the_loss_at_refresh_only():
    module = CatDogModule()
    trainer = pl.Trainer(callbacks=[TQDMProgressBar(refresh_rate=7)], **QUIET)
    trainer.strategy.connect(module)
    module.trainer = trainer
    (bar,) = module.configure_callbacks()
    assert type(bar) is RunningLossBar and bar.refresh_rate == 7
    module.running_loss = torch.tensor(0.25)
    assert bar.get_metrics(trainer, module)["loss"] == 0.25
    module.running_loss = torch.tensor(0.5)
    assert bar.get_metrics(trainer, module)["loss"] == 0.25  # read again only every_s later
    bar.every_s = 0
    assert bar.get_metrics(trainer, module)["loss"] == 0.5
    quiet = pl.Trainer(enable_progress_bar=False, **QUIET)
    quiet.strategy.connect(module)
    module.trainer = quiet
    assert module.configure_callbacks() == []


def test_nan_loss_is_read_every_check_and_names_its_step():
    from types import SimpleNamespace

    module = CatDogModule()
    module.CHECK_EVERY = 4
    losses = [0.5, 0.4, 0.3, 0.2, 0.6, float("nan"), float("inf")]
    for step, value in enumerate(losses):
        module._trainer = SimpleNamespace(global_step=step, current_epoch=1)
        module._watch_loss(torch.tensor(value))  # steps 0-3: checked at the 4th, finite
        torch.testing.assert_close(module.running_loss, torch.tensor(value), equal_nan=True)  # the latest
    assert module._recent_steps == [4, 5, 6]  # not read yet
    with pytest.raises(CatDogError, match=r"the training loss is nan at step 5 \(epoch 1\)"):
        module._raise_if_bad()  # as at the epoch's end


@pytest.mark.slow  # inductor compiles C++ kernels: seconds with its cache warm, up to a minute without
def test_compiled_network_gives_the_eager_outputs_and_gradients():
    """torch.compile (inductor, on the CPU) of a small input (46 x 46: the least the four stages take), to keep the
    compilation short (~20-60 s); the forward and one step's gradients equal the eager network's."""
    torch.manual_seed(0)
    eager = CatDogModule(input_size=(46, 46), fast=True)
    compiled = CatDogModule(input_size=(46, 46), fast=True, compile="default")
    compiled.model.load_state_dict(eager.model.state_dict())
    x, y = torch.rand(4, 3, 46, 46), torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    results = []
    for module in (eager, compiled):
        module.train()
        logits = module.network(x)
        torch.nn.functional.binary_cross_entropy_with_logits(logits, y).backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in module.model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert compiled.__dict__["_compiled"] is not None and eager.__dict__["_compiled"] is None
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # the compiled copy is not saved twice
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x))  # forward (hooks, predictions) stays eager
    with pytest.raises(CatDogError, match="model.compile"):
        CatDogModule(compile="fastest")


def test_tf32_is_off_unless_asked():
    def state():
        if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
            return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
        return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    before = state()
    try:
        set_tf32(True)
        assert state() in (("tf32", "tf32"), (True, True))
        set_tf32(False)
        assert state() in (("ieee", "ieee"), (False, False))
    finally:
        set_tf32(before[0] in ("tf32", True))
