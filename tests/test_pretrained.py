"""Starting from weights (model.init), torch.hub, and the image size the network follows."""

import sys

import pytest
import torch

import catdog.weights as weights_module
from catdog.model import CatDogCNN
from catdog.module import CatDogModule
from catdog.weights import Weights, save_weights
from tests.conftest import REPO, make_tree, train


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """Shipped weights of a random network, in place of the package's file."""
    torch.manual_seed(3)
    path = save_weights(Weights(CatDogCNN().state_dict()), tmp_path / "catdog_cnn.safetensors")
    monkeypatch.setattr(weights_module, "PRETRAINED", path)
    return path


def test_fine_tuning_starts_from_the_shipped_weights(shipped):
    module = CatDogModule(init="pretrained", ema_decay=0.9)
    expected = weights_module.load_weights(shipped).state_dict
    for name, value in module.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)
    module.update_average()  # the moving average starts from them too
    torch.testing.assert_close(module.ema.module.fc1.weight, expected["fc1.weight"], rtol=0, atol=0)
    with pytest.raises(Exception, match="trained on \\[150, 150\\] images"):
        CatDogModule(init="pretrained", input_size=(128, 128))


def test_torch_hub_loads_the_model_from_a_checkout(shipped, tmp_path):
    model = torch.hub.load(str(REPO), "catdog_cnn", source="local", pretrained=True)
    assert not model.training and sum(p.numel() for p in model.parameters()) == 3_453_121
    torch.testing.assert_close(model.fc2.bias, weights_module.load_weights(shipped).state_dict["fc2.bias"])
    picture = tmp_path / "cat.jpg"
    from PIL import Image

    Image.new("RGB", (200, 120), (200, 100, 50)).save(picture)
    assert model(model.preprocessing(picture)[None]).shape == (1, 1)
    sys.modules.pop("hubconf", None)


def test_train_follows_the_image_size_and_refuses_one_too_small(tmp_path, capsys):
    data = make_tree(tmp_path / "data", 4, 2)
    common = [f"data.root={data}", "trainer.max_epochs=1", "callbacks.snapshots=null", "data.num_workers=0"]
    common.append("test=false")
    assert train(*common, "data.image_size=[96,80]", f"hydra.run.dir={tmp_path / 'run'}") == 0
    assert "Total params: 1,028,289" in capsys.readouterr().out  # fc1 takes 128 x 4 x 3
    trained = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert trained["state_dict"]["model.fc1.weight"].shape == (512, 128 * 4 * 3) and trained["global_step"] == 1
    assert train(*common, "data.image_size=[40,40]", f"hydra.run.dir={tmp_path / 'r2'}") == 2
    err = capsys.readouterr().err
    assert err.strip().startswith("error: data.image_size: image size [40, 40]") and "Traceback" not in err
