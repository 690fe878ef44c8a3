import fcntl
import re
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from catdog import CatDogError
from catdog.callbacks import ActivationSnapshots
from catdog.data import CatDogDataModule, free_memory, image_folder
from catdog.data.cache import build_cache
from catdog.data.loading import SeededSamples
from catdog.module import CatDogModule
from catdog.preprocess import Pictures, Preprocessing, Unreadable, collate_readable, load_rgb
from tests.conftest import jpeg_bytes

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
QUIET = dict(enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def cache_files(root) -> list[str]:
    return sorted(p.name for p in (root / ".cache").glob("*.npy") if ".valid" not in p.name)


def test_batches_are_keras_preprocessed(image_tree):
    dm = CatDogDataModule(root=str(image_tree), source=None, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    x, y, skipped = next(iter(dm.train_dataloader()))
    assert skipped == 0
    assert x.shape == (20, 3, 150, 150) and x.dtype == torch.float32
    assert y.shape == (20, 1) and set(y.flatten().tolist()) == {0.0, 1.0}
    assert 0 <= x.min() and x.max() <= 1
    assert len(dm.train_set) == 48 and len(dm.val_set) == len(dm.test_set) == 16  # validation on test/, as the seed
    assert all(("/cats/" in p) == (t == 0) for p, t in zip(dm.train_set.paths, dm.train_set.targets, strict=True))

    # one file by hand, the Keras way: RGB, PIL nearest resize to 150x150, times 1/255
    path = dm.test_set.paths[0]
    image = Image.open(path).convert("RGB").resize((150, 150), Image.NEAREST)
    expected = np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
    got = dm.test_set[0][0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, expected)
    # and its label, in a batch, as the folder names it
    _, y, _ = next(iter(dm.test_dataloader()))
    assert y[0, 0] == dm.test_set.targets[0] == 0 and y[-1, 0] == 1


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
        assert Preprocessing()(path).shape == (3, 150, 150)
        assert Preprocessing().pixels(path).shape == (150, 150, 3)
    assert np.asarray(load_rgb(folder / "sixteen.png")).max() == 40000 // 257  # scaled, not clipped to white
    assert load_rgb(folder / "rotated.jpg").size == (30, 20)  # as Keras: EXIF ignored
    assert load_rgb(folder / "rotated.jpg", exif_transpose=True).size == (20, 30)  # option: upright
    with pytest.raises(CatDogError, match="interpolation"):
        Preprocessing(interpolation="cubic-ish")
    with pytest.raises(CatDogError, match="interpolation"):
        CatDogDataModule(interpolation="cubic-ish")


def test_unreadable_files_are_skipped_one_way(tmp_path):
    """``Pictures`` + ``collate_readable``: what training, evaluate, predict and the atlas share."""
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes(1))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"junk" * 20)
    paths = [tmp_path / "empty.jpg", good, tmp_path / "junk.jpg", good]
    pictures = Pictures(paths, Preprocessing((20, 30)))
    items = [pictures[i] for i in range(len(pictures))]
    assert isinstance(items[0], Unreadable) and items[0].index == 0
    assert items[0].error.startswith(f"cannot read image {tmp_path / 'empty.jpg'}")
    batch = collate_readable(items)
    assert batch.pictures.shape == (2, 20, 30, 3) and batch.pictures.dtype == torch.uint8
    assert batch.indices == [1, 3] and [u.index for u in batch.unreadable] == [0, 2]
    assert torch.equal(batch.pictures[0], Preprocessing((20, 30)).pixels(good))
    nothing = collate_readable(items[:1] + items[2:3])
    assert nothing.pictures.numel() == 0 and nothing.indices == [] and len(nothing.unreadable) == 2
    with pytest.warns(UserWarning, match="skipped: cannot read image .*junk.jpg"):
        Pictures(paths, Preprocessing(), warn=True)[2]


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
    with pytest.warns(UserWarning) as warned:
        x, y, skipped = next(iter(dm.train_dataloader()))
    assert skipped == 3 and len(x) == len(y) == 58
    named = sorted(Path(re.match("skipped: cannot read image (.*?): ", str(w.message))[1]).name for w in warned)
    assert named == ["empty.jpg", "junk.jpg", "truncated.jpg"]  # one line each: "skipped: cannot read image PATH: ..."
    assert y.sum() == 24  # the labels of the pictures that decoded: the bad dogs are not counted as dogs


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
    # seeded per sample in the training loader: the same (seed, epoch, index), the same picture
    seeded = dm.train_dataloader().dataset
    assert isinstance(seeded, SeededSamples) and torch.equal(seeded[(5, 0)][0], seeded[(5, 0)][0])
    assert not torch.equal(seeded[(5, 0)][0], seeded[(6, 0)][0])
    plain = CatDogDataModule(root=str(image_tree), source=None, num_workers=0, augment={"hflip": False})
    plain.setup("fit")
    assert plain.augment is None and torch.equal(plain.train_set[0][0], plain.train_set[0][0])


def _batches(dm: CatDogDataModule, dataset) -> list:
    return [dm.on_after_batch_transfer(b, 0) for b in dm._loader(dataset, shuffle=False)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_the_cache_held_on_the_device_gives_the_files_batches(image_tree, device, forked_pool):
    (image_tree / "train" / "dogs" / "junk.jpg").write_bytes(b"junk")
    settings = dict(root=str(image_tree), source=None, num_workers=0, batch_size=16, val_fraction=0.2)
    files = CatDogDataModule(**settings)
    files.setup("fit")
    held = CatDogDataModule(**settings, cache=True)
    held.trainer = pl.Trainer(accelerator=device, devices=1, logger=False, **QUIET)  # the trainer's device
    held.prepare_data()  # builds the caches in worker processes (which warn about junk.jpg)
    held.setup("fit")
    assert [c.split("-")[0] for c in cache_files(image_tree)] == ["test", "train"]
    assert held.pixels is not None and held.pixels.device.type == device and held.pixels.dtype == torch.uint8
    for split in ("train_set", "val_set", "test_set"):
        with warnings.catch_warnings():  # the files path warns about junk.jpg
            warnings.simplefilter("ignore")
            expected = _batches(files, getattr(files, split))
        got = _batches(held, getattr(held, split))
        assert len(got) == len(expected) > 0
        for (x, y, bad), (hx, hy, hbad) in zip(expected, got, strict=True):
            assert torch.equal(x, hx.cpu()) and torch.equal(y, hy) and bad == hbad
            assert hx.is_contiguous(memory_format=torch.channels_last)
    assert sum(int(b[2]) for b in _batches(held, held.train_set) + _batches(held, held.val_set)) == 1  # junk.jpg
    assert held._loader(held.train_set, shuffle=True).num_workers == 0  # indices only: no workers


def test_the_cache_is_the_same_file_until_the_files_change(image_tree, forked_pool):
    dm = CatDogDataModule(root=str(image_tree), source=None, num_workers=1, cache=True)
    dm.prepare_data()
    caches = cache_files(image_tree)
    again = CatDogDataModule(root=str(image_tree), source=None, num_workers=1, cache=True)
    again.prepare_data()
    again.setup("fit")  # nothing changed: the same cache file
    assert cache_files(image_tree) == caches and len(caches) == 2
    (image_tree / "train" / "cats" / "new.jpg").write_bytes(jpeg_bytes(99))
    changed = CatDogDataModule(root=str(image_tree), source=None, num_workers=1, cache=True)
    changed.setup("fit")
    now = [c for c in cache_files(image_tree) if c.startswith("train-")]
    assert len(now) == 1 and now[0] not in caches and len(changed.train_set) == 49  # rebuilt, the old one removed
    other = CatDogDataModule(root=str(image_tree), source=None, num_workers=1, cache=True, interpolation="bilinear")
    other.setup("fit")
    assert len(cache_files(image_tree)) == 2 and not set(cache_files(image_tree)) & {*caches, *now}  # other caches


def test_a_damaged_cache_is_rebuilt_with_a_one_line_warning(image_tree, capsys, forked_pool):
    folder = image_folder(image_tree / "test", Preprocessing())
    cache = build_cache(image_tree / "test", folder, workers=1)
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
        assert build_cache(image_tree / "test", folder, workers=1) == cache
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"warning: the cached images {cache} are damaged"), err
        np.testing.assert_array_equal(np.load(cache), good)
    assert build_cache(image_tree / "test", folder, workers=1) == cache and not capsys.readouterr().err  # kept


def test_a_cache_being_built_elsewhere_is_waited_for(image_tree, capsys, forked_pool):
    folder = image_folder(image_tree / "test", Preprocessing())
    lock_file = image_tree / ".cache" / ".test.lock"
    lock_file.parent.mkdir()
    built = []
    with open(lock_file, "a") as other:  # another run building the test split's cache
        fcntl.flock(other, fcntl.LOCK_EX)
        thread = threading.Thread(target=lambda: built.append(build_cache(image_tree / "test", folder, workers=1)))
        thread.start()
        deadline = time.time() + 30
        while "waiting for another process" not in capsys.readouterr().out and time.time() < deadline:
            time.sleep(0.05)
        assert thread.is_alive() and not built and not cache_files(image_tree)  # it waits, building nothing
    thread.join(60)
    assert built and cache_files(image_tree) == [built[0].name]


def test_a_cache_too_big_for_the_device_leaves_the_files_to_the_workers(image_tree, monkeypatch, capsys, forked_pool):
    assert free_memory(torch.device("cpu")) > 0
    size = (48 + 16) * 150 * 150 * 3  # the pictures of both splits, uint8
    monkeypatch.setattr("catdog.data.datamodule.free_memory", lambda device: 2 * size - 1)  # half is just too small
    augment = {"hflip": True}
    dm = CatDogDataModule(root=str(image_tree), source=None, num_workers=0, cache=True, augment=augment)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.pixels is None and "would take over half" in capsys.readouterr().out
    assert not (image_tree / ".cache").exists()  # nothing decoded for nothing
    assert isinstance(dm.train_dataloader().dataset, SeededSamples)  # the workers augment, as with cache=false
    monkeypatch.setattr("catdog.data.datamodule.free_memory", lambda device: 2 * size)
    roomy = CatDogDataModule(root=str(image_tree), source=None, num_workers=0, cache=True, augment=augment)
    roomy.prepare_data()
    roomy.setup("fit")
    assert roomy.pixels is not None and roomy.pixels.numel() * roomy.pixels.element_size() == size


@pytest.mark.slow
def test_a_fit_reads_the_cache_on_the_device(image_tree, forked_pool):
    (image_tree / "test" / "cats" / "0junk.jpg").write_bytes(b"junk")  # the first cat: the probe is the next one
    dm = CatDogDataModule(root=str(image_tree), source=None, batch_size=8, cache=True, num_workers=1)
    module = CatDogModule(fast=True)
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
    cat = dm.val_set.folder.paths.index(str(image_tree / "test" / "cats" / "cat.0.jpg"))
    assert cat == 1 and isinstance(dm.val_set[0], Unreadable)
    assert torch.equal(snapshots.probes["cat"], dm.val_set[cat][0]) and "dog" in snapshots.probes
    assert sorted(p.name for p in (image_tree / "snapshots").iterdir()) == ["cat", "cat.gif", "dog", "dog.gif"]
