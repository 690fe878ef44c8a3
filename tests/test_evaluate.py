import json

import torch

from catdog.evaluate import main
from catdog.model import CatDogCNN


def save_checkpoint(model: CatDogCNN, path):
    """A checkpoint as training writes it, as far as evaluate reads it: the module's state dict."""
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def always_dog(path):
    """A hand-made checkpoint that always says "dog" (logit 3)."""
    model = CatDogCNN()
    with torch.no_grad():
        model.fc2.weight.zero_()
        model.fc2.bias.fill_(3.0)
    return save_checkpoint(model, path)


def test_evaluate_a_checkpoint_on_an_image_folder(tmp_path, image_tree, capsys):
    # a hand-made checkpoint that always says "dog": every cat is wrong, every dog right
    ckpt = always_dog(tmp_path / "dog.ckpt")
    (image_tree / "test" / "cats" / "cat.0.jpg").write_bytes(b"not a picture")  # the first file

    assert main([f"ckpt={ckpt}", f"data.root={image_tree}", f"out_dir={tmp_path / 'eval'}", "data.num_workers=0"]) == 0
    out = capsys.readouterr().out
    assert "accuracy 53.33%" in out and "cats      0      7" in out and "dogs      0      8" in out
    assert "15 images (1 unreadable, left out)" in out
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["images"] == 15 and result["unreadable"] == 1 and result["confusion"]["matrix"] == [[0, 7], [0, 8]]
    assert abs(result["loss"] - (7 * 3.0486 + 8 * 0.0486) / 15) < 1e-3  # BCE of logit 3 for a cat and for a dog
    assert len(result["most_wrong"]) == 7 and all("/cats/" in p for p in result["most_wrong"])
    assert str(image_tree / "test" / "cats" / "cat.0.jpg") not in result["most_wrong"]
    assert (tmp_path / "eval" / "most_wrong.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_errors_are_one_line(tmp_path, image_tree, capsys):
    assert main(["ckpt=none", f"data.root={tmp_path / 'nothing'}"]) == 2
    assert main(["cpkt=x"]) == 2
    assert main(["ckpt=none", f"data.root={image_tree}", "split=val", "data.val_fraction=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error:") for line in err)


def test_tta_and_bf16_precision(tmp_path, image_tree):
    from catdog.data import image_folder
    from catdog.preprocess import Preprocessing, scaled

    torch.manual_seed(0)
    model = CatDogCNN()
    ckpt = save_checkpoint(model, tmp_path / "random.ckpt")
    losses = {}
    for tta, precision in ((False, "32"), (True, "32"), ("bf16", "bf16-mixed")):
        out = tmp_path / f"tta{tta}"
        args = [f"ckpt={ckpt}", f"data.root={image_tree}", f"out_dir={out}", "data.num_workers=0"]
        assert main([*args, f"tta={tta is True}", f"precision={precision}"]) == 0
        result = json.loads((out / "evaluation.json").read_text())
        losses[tta] = result["loss"]
        assert result["precision"] == precision

    folder = image_folder(image_tree / "test", Preprocessing(), scaled)
    x = torch.stack([folder[i][0] for i in range(len(folder))])
    y = torch.tensor([float(label) for label in folder.targets])
    with torch.no_grad():
        plain, mirrored = model(x)[:, 0], model(x.flip(3))[:, 0]
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert abs(losses[False] - float(bce(plain, y))) < 1e-5
    assert abs(losses[True] - float(bce((plain + mirrored) / 2, y))) < 1e-5
    assert abs(losses[True] - losses[False]) > 1e-4  # the mirror changes the logits of a random model
    assert 0 < abs(losses["bf16"] - losses[False]) < 1e-2  # bfloat16 autocast ran, close to float32


def test_split_val_is_the_validation_set_training_carves_out(tmp_path, image_tree):
    from catdog.data import CatDogDataModule

    dm = CatDogDataModule(root=str(image_tree), source=None, val_fraction=0.25, split_seed=3, num_workers=0)
    dm.setup()
    val = [dm.val_set.dataset.paths[i] for i in dm.val_set.indices]
    ckpt = always_dog(tmp_path / "dog.ckpt")  # the wrong ones are exactly the validation cats
    args = [f"ckpt={ckpt}", f"data.root={image_tree}", "split=val", "data.val_fraction=0.25", "data.split_seed=3"]
    assert main([*args, f"out_dir={tmp_path}", "data.num_workers=0", "wrong=100"]) == 0
    result = json.loads((tmp_path / "evaluation.json").read_text())
    assert result["images"] == len(val) == 12
    assert sorted(result["most_wrong"]) == sorted(p for p in val if "/cats/" in p)
