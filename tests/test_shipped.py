"""The weights shipped with the package: they load without Lightning or pickle, carry their record, and classify
pictures of the test split that no one trained or tuned on."""

import json

import pytest
import torch

from catdog.prepare import Entry, label_of, split
from catdog.weights import PRETRAINED, load_weights
from tests.conftest import REPO

SHARED_TRAIN = REPO.parent / "shared" / "data" / "dogs-vs-cats" / "train"  # the Kaggle images, where they are at hand


def test_the_shipped_weights_are_package_data_with_their_record():
    assert PRETRAINED.is_file() and PRETRAINED.stat().st_size < 15 * 2**20
    weights = load_weights("pretrained")
    for key in ("command", "commit", "test_accuracy", "test_images"):
        assert key in weights.metadata, key
    assert weights.preprocessing.image_size == (150, 150)
    assert sum(v.numel() for v in weights.state_dict.values()) == 3_453_121


@pytest.mark.slow  # 300 photos decoded and scored at 150 x 150
@pytest.mark.skipif(not SHARED_TRAIN.is_dir(), reason="needs the Kaggle training images beside the repository")
def test_the_shipped_weights_classify_the_test_split(tmp_path):
    """300 images of the default 80/20 split's test part (what ``catdog.prepare`` makes of the Kaggle folder)."""
    names = sorted(p.name for p in SHARED_TRAIN.iterdir())
    entries = [Entry(n, label_of(n), lambda: b"") for n in names if label_of(n)]
    test = split(entries, test_fraction=0.2, seed=0)["test"]
    chosen = [e for e in test if e.label == "cats"][:150] + [e for e in test if e.label == "dogs"][:150]
    weights = load_weights("pretrained")
    model = weights.model()
    x = torch.stack([weights.preprocessing(SHARED_TRAIN / e.name) for e in chosen])
    with torch.no_grad():
        predicted = (model(x)[:, 0] > 0).float()
    truth = torch.tensor([float(e.label == "dogs") for e in chosen])
    accuracy = float((predicted == truth).float().mean())
    recorded = weights.metadata["test_accuracy"]
    print(json.dumps({"accuracy_on_300": accuracy, "recorded_on_4500": recorded}))
    assert recorded >= 0.93 and accuracy >= 0.90
