import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from catdog import CatDogError
from catdog.callbacks import ActivationSnapshots
from catdog.data import CatDogDataModule, free_memory
from catdog.module import CatDogModule
from catdog.preprocess import Preprocess, load_rgb
from tests.conftest import jpeg_bytes

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
QUIET = dict(enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def test_batches_are_keras_preprocessed(image_tree):
    dm = CatDogDataModule(root=str(image_tree), source=None, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    x, y, skipped = next(iter(dm.train_dataloader()))
    assert skipped == 0
    assert x.shape == (20, 3, 150, 150) and x.dtype == torch.float32
    assert y.shape == (20, 1) and set(y.flatten().tolist()) <= {0.0, 1.0}
    assert 0 <= x.min() and x.max() <= 1
    assert dm.train_set.class_to_idx == {"cats": 0, "dogs": 1}
    assert len(dm.train_set) == 48 and len(dm.val_set) == len(dm.test_set) == 16  # validation on test/, as the seed

    # one file by hand, the Keras way: RGB, PIL nearest resize to 150x150, times 1/255
    path, label = dm.test_set.samples[0]
    image = Image.open(path).convert("RGB").resize((150, 150), Image.NEAREST)
    expected = np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
    got = dm.test_set[0][0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, expected)


def test_validation_can_be_carved_from_train(image_tree):
    dm = CatDogDataModule(root=str(image_tree), source=None, num_workers=0, val_fraction=0.25)
    dm.setup("fit")
    assert len(dm.train_set) == 36 and len(dm.val_set) == 12
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)


def odd_images(folder):
    """Files that are images, but not plain RGB JPEGs: each must load as RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    rgb.save(folder / "png_named.jpg", format="PNG")
    rgb.save(folder / "gif_named.jpg", format="GIF")
    rgb.save(folder / "bmp_named.jpg", format="BMP")
    rgb.save(folder / "webp_named.jpg", format="WEBP")
    rgb.convert("L").save(folder / "gray.jpg")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("P").save(folder / "palette.png", transparency=0)
    Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(folder / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to view
    rgb.save(folder / "rotated.jpg", exif=exif)
    return folder


def test_odd_images_become_rgb(tmp_path):
    folder = odd_images(tmp_path / "odd")
    for path in folder.iterdir():
        img = load_rgb(path)
        assert img.mode == "RGB", path.name
        assert Preprocess()(img).shape == (3, 150, 150)
    assert np.asarray(load_rgb(folder / "sixteen.png")).max() == 40000 // 257  # scaled, not clipped to white
    assert load_rgb(folder / "rotated.jpg").size == (30, 20)  # as Keras: EXIF ignored
    assert load_rgb(folder / "rotated.jpg", exif_transpose=True).size == (20, 30)  # option: upright
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(interpolation="cubic-ish")


def test_bad_files_in_training_are_skipped_and_counted(image_tree):
    (image_tree / "train" / "cats" / "empty.jpg").write_bytes(b"")
    (image_tree / "train" / "dogs" / "junk.jpg").write_bytes(b"junk" * 20)
    (image_tree / "train" / "dogs" / "truncated.jpg").write_bytes(jpeg_bytes(3)[:300])
    (image_tree / "train" / "dogs" / "._dog.1.jpg").write_bytes(b"mac resource fork")  # hidden: ignored
    (image_tree / "train" / "cats" / "Thumbs.db").write_bytes(b"junk")  # not an image name: ignored
    (image_tree / "train" / "cats" / "loop").symlink_to(image_tree / "train")  # a symlink loop: not followed
    odd_images(image_tree / "train" / "cats" / "odd")
    dm = CatDogDataModule(root=str(image_tree), source=None, num_workers=0, batch_size=100)
    dm.setup("fit")
    assert len(dm.train_set) == 48 + 3 + 10
    with pytest.warns(UserWarning, match="skipped .*empty.jpg"):
        x, y, skipped = next(iter(dm.train_dataloader()))
    assert skipped == 3 and len(x) == 58


def test_empty_class_folder_is_a_clear_error(image_tree):
    for f in (image_tree / "test" / "dogs").iterdir():
        f.unlink()
    dm = CatDogDataModule(root=str(image_tree), source=None, num_workers=0)
    with pytest.raises(CatDogError, match="test/dogs holds no images"):
        dm.setup("fit")


def test_missing_data_and_wrong_classes_are_clear(tmp_path, image_tree):
    with pytest.raises(CatDogError, match="data.source"):
        CatDogDataModule(root=str(tmp_path / "none"), source=None).prepare_data()
    (image_tree / "train" / "horses").mkdir()
    dm = CatDogDataModule(root=str(image_tree), source=None, num_workers=0)
    with pytest.raises(CatDogError, match="horses"):
        dm.setup("fit")


def test_missing_root_is_prepared_from_source(tmp_path, kaggle_files):
    from tests.conftest import write_zip

    source = write_zip(tmp_path / "train.zip", kaggle_files)
    dm = CatDogDataModule(root=str(tmp_path / "prepared"), source=str(source), num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 32 and len(dm.test_set) == 8


def test_augmentation_changes_train_images_only(image_tree):
    augment = {"hflip": True, "rotation": 40, "shift": 0.2, "zoom": 0.2, "shear": 10}
    dm = CatDogDataModule(root=str(image_tree), source=None, num_workers=0, augment=augment, val_fraction=0.25)
    dm.setup("fit")
    torch.manual_seed(0)
    a, b = dm.train_set[0][0], dm.train_set[0][0]
    assert a.shape == (3, 150, 150) and not torch.equal(a, b)  # random each time
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0]) and torch.equal(dm.test_set[0][0], dm.test_set[0][0])
    plain = CatDogDataModule(root=str(image_tree), source=None, num_workers=0, augment={"hflip": False})
    plain.setup("fit")
    assert plain.augment is None and torch.equal(plain.train_set[0][0], plain.train_set[0][0])


def test_decoded_cache_gives_the_same_batches_and_is_rebuilt_when_files_change(image_tree):
    (image_tree / "train" / "dogs" / "junk.jpg").write_bytes(b"junk")
    plain = CatDogDataModule(root=str(image_tree), source=None, num_workers=0, batch_size=100)
    cached = CatDogDataModule(
        root=str(image_tree), source=None, num_workers=0, batch_size=100, cache=True, cache_on_device=False
    )
    plain.setup("fit")
    cached.prepare_data()  # builds the caches in worker processes (which warn about junk.jpg on stderr)
    cached.setup("fit")
    caches = sorted(p.name for p in (image_tree / ".cache").glob("*.npy") if ".valid" not in p.name)
    assert [c.split("-")[0] for c in caches] == ["test", "train"]
    with pytest.warns(UserWarning):
        a = next(iter(plain._loader(plain.train_set, shuffle=False)))
    b = next(iter(cached._loader(cached.train_set, shuffle=False)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2] == 1

    again = CatDogDataModule(root=str(image_tree), source=None, num_workers=0, cache=True)
    again.setup("fit")  # nothing changed: the same cache file
    assert sorted(p.name for p in (image_tree / ".cache").glob("*.npy") if ".valid" not in p.name) == caches
    (image_tree / "train" / "cats" / "new.jpg").write_bytes(jpeg_bytes(99))
    changed = CatDogDataModule(root=str(image_tree), source=None, num_workers=0, cache=True)
    changed.setup("fit")
    now = sorted(p.name for p in (image_tree / ".cache").glob("train-*.npy") if ".valid" not in p.name)
    assert len(now) == 1 and now[0] not in caches and len(changed.train_set) == 50  # rebuilt, the old one removed


def test_a_damaged_cache_is_rebuilt_with_a_one_line_warning(image_tree, capsys, monkeypatch):
    import multiprocessing

    from catdog.data import build_cache, image_folder

    fork = multiprocessing.get_context("fork")
    monkeypatch.setattr(multiprocessing, "get_context", lambda method=None: fork)  # a spawned pool imports for seconds
    preprocess = Preprocess((150, 150), "nearest")
    folder = image_folder(image_tree / "test", preprocess)
    cache = build_cache(folder, preprocess, False, workers=1)
    good = np.load(cache)
    capsys.readouterr()
    damages = {
        "truncated": lambda: cache.write_bytes(cache.read_bytes()[:1000]),
        "garbage": lambda: cache.write_bytes(np.random.default_rng(0).bytes(5000)),
        "wrong shape": lambda: np.save(cache, good[:, :100]),
        "flags damaged": lambda: cache.with_suffix(".valid.npy").write_bytes(b"\x93NUMPY"),
    }
    for damage in damages.values():
        damage()
        assert build_cache(folder, preprocess, False, workers=1) == cache
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"warning: the cached images {cache} are damaged"), err
        np.testing.assert_array_equal(np.load(cache), good)
    assert build_cache(folder, preprocess, False, workers=1) == cache and not capsys.readouterr().err  # whole: kept


def _batches(dm: CatDogDataModule, dataset) -> list:
    return [dm.on_after_batch_transfer(b, 0) for b in dm._loader(dataset, shuffle=False)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_cache_on_device_gives_the_same_batches_as_the_workers(image_tree, device):
    (image_tree / "train" / "dogs" / "junk.jpg").write_bytes(b"junk")
    settings = dict(root=str(image_tree), source=None, num_workers=0, batch_size=16, cache=True, val_fraction=0.2)
    mapped = CatDogDataModule(**settings, cache_on_device=False)
    mapped.prepare_data()
    mapped.setup("fit")
    held = CatDogDataModule(**settings, cache_on_device=True if device == "cpu" else "auto")
    held.trainer = pl.Trainer(accelerator=device, devices=1, logger=False, **QUIET)  # auto asks the trainer's device
    held.setup("fit")
    assert held.pixels is not None and held.pixels.device.type == device and held.pixels.dtype == torch.uint8
    for split in ("train_set", "val_set", "test_set"):
        for (x, y, bad), (hx, hy, hbad) in zip(
            _batches(mapped, getattr(mapped, split)), _batches(held, getattr(held, split)), strict=True
        ):
            assert torch.equal(x, hx.cpu()) and torch.equal(y, hy) and bad == hbad
            assert hx.is_contiguous(memory_format=torch.channels_last)
    assert sum(int(b[2]) for b in _batches(held, held.train_set) + _batches(held, held.val_set)) == 1  # junk.jpg

    with pytest.raises(CatDogError, match="augment_on=workers"):
        CatDogDataModule(**settings, cache_on_device=True, augment={"hflip": True}, augment_on="workers").setup("fit")
    held_augmented = CatDogDataModule(**settings, cache_on_device=True, augment={"hflip": True})
    held_augmented.setup("fit")
    assert held_augmented.pixels is not None  # augmented there, whole batches at once (tests/test_gpu_path.py)
    cpu_auto = CatDogDataModule(**settings)
    cpu_auto.setup("fit")
    assert cpu_auto.pixels is not None and cpu_auto.pixels.device.type == "cpu"  # auto: RAM has room
    augmented = CatDogDataModule(**settings, augment={"hflip": True})
    augmented.setup("fit")
    assert augmented.pixels is None  # auto on a CPU leaves augmented images to the workers (on a GPU: held)


def test_cache_on_device_auto_needs_room(image_tree, monkeypatch, capsys):
    assert free_memory(torch.device("cpu")) > 0
    dm = CatDogDataModule(root=str(image_tree), source=None, num_workers=0, cache=True)
    dm.prepare_data()
    size = sum(p.stat().st_size for p in (image_tree / ".cache").glob("*.npy") if ".valid" not in p.name)
    monkeypatch.setattr("catdog.data.free_memory", lambda device: 2 * size - 1)  # half of it is just too small
    dm.setup("fit")
    assert dm.pixels is None and "would take over half" in capsys.readouterr().out
    monkeypatch.setattr("catdog.data.free_memory", lambda device: 2 * size)
    roomy = CatDogDataModule(root=str(image_tree), source=None, num_workers=0, cache=True)
    roomy.setup("fit")
    assert roomy.pixels is not None and roomy.pixels.numel() * roomy.pixels.element_size() <= size


def test_a_fit_reads_the_cache_on_the_device(image_tree):
    (image_tree / "test" / "cats" / "0junk.jpg").write_bytes(b"junk")  # the first cat: the probe is the next one
    dm = CatDogDataModule(root=str(image_tree), source=None, batch_size=8, cache=True, cache_on_device=True)
    module = CatDogModule(channels_last=True, relu_after_pool=True)
    snapshots = ActivationSnapshots(str(image_tree / "snapshots"))
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        default_root_dir=image_tree,
        callbacks=[snapshots],
        **QUIET,
    )
    trainer.fit(module, datamodule=dm)
    assert dm.pixels is not None and trainer.callback_metrics["train_loss"].isfinite()
    cat = dm.val_set.folder.samples.index((str(image_tree / "test" / "cats" / "cat.0.jpg"), 0))
    assert cat == 1 and dm.val_set[0] is None
    assert torch.equal(snapshots.probes["cat"], dm.val_set[cat][0]) and "dog" in snapshots.probes
    assert sorted(p.name for p in (image_tree / "snapshots").iterdir()) == ["cat", "cat.gif", "dog", "dog.gif"]
