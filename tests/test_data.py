import numpy as np
import pytest
import torch
from PIL import Image

from catdog import CatDogError
from catdog.data import CatDogDataModule
from catdog.preprocess import Preprocess, load_rgb


def test_batches_are_keras_preprocessed(image_tree):
    dm = CatDogDataModule(root=str(image_tree), source=None, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
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


def test_other_modes_become_rgb(tmp_path):
    for mode in ("L", "CMYK", "RGBA", "P", "I;16"):
        path = tmp_path / f"{mode.replace(';', '')}.png"
        Image.new(mode, (30, 20)).save(path) if mode != "CMYK" else Image.new(mode, (30, 20)).save(
            path.with_suffix(".jpg")
        )
        img = load_rgb(path if mode != "CMYK" else path.with_suffix(".jpg"))
        assert img.mode == "RGB"
        assert Preprocess()(img).shape == (3, 150, 150)
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(interpolation="cubic-ish")


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
