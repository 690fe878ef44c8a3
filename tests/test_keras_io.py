"""Keras files in: models of the seed's architecture saved by Keras 3 itself (``.keras``, legacy ``.h5``, a
weights-only ``.h5``) load through ``load_weights`` and give Keras's output and all 8 of Keras's intermediate outputs
to float32 precision; other architectures are refused in one line naming the layer.

Keras runs in a subprocess on its PyTorch backend (``python tests/test_keras_io.py DIR``, the ``__main__`` block at
the end): no TensorFlow, and the test process itself never imports Keras, as a user's would not. That interpreter
imports Keras and builds a dozen models of the seed's size (about 10 s here), so every test that reads its files is
marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from catdog import CatDogError
from catdog.export import main as export_main
from catdog.hooks import ActivationRecorder
from catdog.preprocess import Preprocessing
from catdog.weights import load_weights
from tests.conftest import REPO
from tests.test_export import LAYERS, photos

h5py = pytest.importorskip("h5py")  # the keras extra; in the dev extra
if importlib.util.find_spec("keras") is None:  # only the subprocess imports it (on torch); in the dev extra
    pytest.skip("Keras 3 is not installed (pip install keras)", allow_module_level=True)


@pytest.fixture(scope="module")
def keras_dir(tmp_path_factory) -> Path:
    """The files Keras 3 writes (see ``make_keras_files``), and what its models output for 3 real JPEGs."""
    folder = tmp_path_factory.mktemp("keras")
    paths = photos(folder / "photos")
    for size in (150, 180):
        x = torch.stack([Preprocessing(image_size=(size, size))(p) for p in paths])
        np.save(folder / f"x{size}.npy", x.permute(0, 2, 3, 1).numpy())  # Keras's NHWC
    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, __file__, str(folder)], capture_output=True, text=True, timeout=600, env=env, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def assert_matches_keras(path: Path, outputs: Path, size: int = 150) -> None:
    """``load_weights(path)`` gives the Keras model's sigmoid output and its 8 intermediate outputs."""
    weights = load_weights(path)
    assert weights.preprocessing == Preprocessing(image_size=(size, size))  # the seed's: nearest, 1/255
    assert weights.source == str(path)
    keras_out = dict(np.load(outputs))
    x = torch.from_numpy(keras_out["x"]).permute(0, 3, 1, 2)
    model = weights.model()
    with ActivationRecorder(model) as recorder, torch.no_grad():
        probability = torch.sigmoid(model(x)).numpy()
    assert keras_out["y"].std() > 1e-3  # three different answers: the weights show in the output
    np.testing.assert_allclose(probability, keras_out["y"], rtol=0, atol=1e-6)
    assert list(recorder.records) == LAYERS
    for i, ours in enumerate(LAYERS):
        keras_nchw = keras_out[f"layer{i}"].transpose(0, 3, 1, 2)
        scale = float(np.abs(keras_nchw).max())
        assert scale > 0.01
        np.testing.assert_allclose(recorder.records[ours].numpy(), keras_nchw, rtol=0, atol=2e-6 * scale)


@pytest.mark.slow
def test_keras_v3_file_matches_keras(keras_dir):
    assert_matches_keras(keras_dir / "seed.keras", keras_dir / "seed.npz")
    assert "keras" not in sys.modules and "tensorflow" not in sys.modules  # read with h5py alone


@pytest.mark.slow
def test_legacy_h5_file_with_dropout_matches_keras(keras_dir):
    assert_matches_keras(keras_dir / "dropout.h5", keras_dir / "dropout.npz")


@pytest.mark.slow
def test_weights_only_h5_file_matches_keras(keras_dir):
    """Keras 2's ``model.save_weights("w.h5")`` layout: no config, the arrays' shapes are checked."""
    assert_matches_keras(keras_dir / "weights_only.h5", keras_dir / "seed.npz")


@pytest.mark.slow
def test_functional_model_with_its_own_layer_names_matches_keras(keras_dir):
    assert_matches_keras(keras_dir / "functional.keras", keras_dir / "functional.npz")


@pytest.mark.slow
def test_input_size_comes_from_the_config(keras_dir):
    assert_matches_keras(keras_dir / "size180.keras", keras_dir / "size180.npz", size=180)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("wide_conv.keras", "layer conv2d has 64 filters, the seed's has 32"),
        ("wide_dense.h5", "layer dense has 256 units, the seed's has 512"),
        ("extra_conv.keras", "layer conv2d_4 is a Conv2D, the seed's has a Flatten there"),
        ("linear_head.keras", "layer dense_1 has activation linear, the seed's has sigmoid"),
        ("same_padding.h5", "layer conv2d has padding same, the seed's has valid"),
        ("rescaling.keras", "layer rescaling is a Rescaling, the seed's has a Conv2D(32, 3x3, relu) there"),
    ],
)
def test_other_architectures_are_refused_naming_the_layer(keras_dir, name, message):
    path = keras_dir / name
    with pytest.raises(CatDogError) as info:
        load_weights(path)
    assert str(info.value) == f"{path}: {message}"


@pytest.mark.slow
def test_weights_only_h5_of_another_architecture_is_refused_by_shape(keras_dir, tmp_path):
    path = tmp_path / "w.h5"
    shutil.copy(keras_dir / "weights_only.h5", path)
    with h5py.File(path, "r+") as f:
        group = f["conv2d_1"]
        kernel = group.attrs["weight_names"][0]
        kernel = kernel.decode() if isinstance(kernel, bytes) else kernel
        del group[kernel]
        group[kernel] = np.zeros((3, 3, 32, 32), np.float32)
    with pytest.raises(CatDogError) as info:
        load_weights(path)
    assert (
        str(info.value) == f"{path}: layer conv2d_1 has a kernel of shape (3, 3, 32, 32), the seed's has (3, 3, 32, 64)"
    )


def test_files_that_are_not_keras_models_are_refused(tmp_path):
    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("not HDF5")
    other_h5 = tmp_path / "data.h5"
    with h5py.File(other_h5, "w") as f:
        f["x"] = np.zeros(3)
    other_zip = tmp_path / "photos.keras"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("cat.jpg", b"")
    subclassed = tmp_path / "subclassed.keras"
    with zipfile.ZipFile(subclassed, "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": "MyModel", "config": {}}))
        archive.writestr("model.weights.h5", b"")
    expected = {
        not_h5: "is neither a Keras 3 .keras archive nor a Keras HDF5 (.h5) file",
        other_h5: "is an HDF5 file but not a Keras model (no model_weights or layer_names)",
        other_zip: "is a zip file but not a Keras model archive (no config.json and model.weights.h5)",
        subclassed: "holds a MyModel model; only a Sequential or Functional model of the seed's layers",
    }
    for path, message in expected.items():
        with pytest.raises(CatDogError) as info:
            load_weights(path)
        assert str(info.value) == f"{path} {message}"


@pytest.mark.slow
def test_truncated_keras_file_is_refused_in_one_line(keras_dir, tmp_path):
    path = tmp_path / "cut.keras"
    path.write_bytes((keras_dir / "seed.keras").read_bytes()[:100_000])
    with pytest.raises(CatDogError) as info:
        load_weights(path)
    assert str(info.value).startswith(f"{path} ") and "\n" not in str(info.value)


@pytest.mark.slow
def test_export_command_takes_a_keras_file_and_refuses_a_wrong_one(keras_dir, tmp_path, monkeypatch, capsys):
    """End to end: ``catdog-export ckpt=seed.keras`` gives an ONNX model whose output is Keras's."""
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    assert export_main([f"ckpt={keras_dir / 'seed.keras'}", "out=seed.onnx"]) == 0, capsys.readouterr().err[-2000:]
    capsys.readouterr()
    keras_out = np.load(keras_dir / "seed.npz")
    session = ort.InferenceSession(str(tmp_path / "seed.onnx"), providers=["CPUExecutionProvider"])
    (logit,) = session.run(None, {"image": keras_out["x"].transpose(0, 3, 1, 2).copy()})
    np.testing.assert_allclose(torch.sigmoid(torch.from_numpy(logit)).numpy(), keras_out["y"], rtol=0, atol=1e-6)

    wrong = keras_dir / "wide_conv.keras"
    assert export_main([f"ckpt={wrong}", "out=wide.onnx"]) == 2
    assert capsys.readouterr().err == f"error: {wrong}: layer conv2d has 64 filters, the seed's has 32\n"
    assert not (tmp_path / "wide.onnx").exists()


def imports_of(module: str) -> set[str]:
    """The catdog modules that ``module`` imports, at its top or inside its functions."""
    import ast

    path = REPO / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = path.with_suffix("") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("catdog"):
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("catdog")}
    return found


def test_no_catdog_module_imports_itself_back():
    """keras_io once imported weights, which imported keras_io back (inside a function, to dodge the circle):
    reading a Keras file is a step of loading weights, so keras_io comes first and knows nothing of weights. No
    module of the package reaches itself again through what it imports."""
    modules = {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "catdog").rglob("*.py")
    }
    graph = {m: {d for d in imports_of(m) if d in modules and d not in (m, "catdog")} for m in modules}
    assert "catdog.weights" not in graph["catdog.keras_io"] and "catdog.keras_io" in graph["catdog.weights"]

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for d in graph[start] - seen:
            seen.add(d)
            if d == target or reaches(d, target, seen):
                return True
        return False

    circles = sorted(m for m in modules if reaches(m, m, set()))
    assert circles == []


# ---- the Keras side, run as ``python tests/test_keras_io.py DIR`` with KERAS_BACKEND=torch ------------------------


def make_keras_files(folder: Path) -> None:
    """Build models with Keras 3, give them random weights (biases too), save them as Keras saves them, and write
    each parity model's outputs for ``x<size>.npy``: the sigmoid output ``y`` and the first 8 layers' outputs."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)

    def seed(
        filters=(32, 64, 128, 128), units=512, size=150, dropout=False, padding="valid", head="sigmoid", fresh=True
    ):
        if fresh:  # layer names from conv2d again; else Keras counts on (conv2d_4, ...), as in a user's session
            keras.backend.clear_session()
        stack = [keras.Input((size, size, 3))]
        for n in filters:
            stack += [layers.Conv2D(n, (3, 3), activation="relu", padding=padding), layers.MaxPooling2D((2, 2))]
        stack.append(layers.Flatten())
        if dropout:  # the book's second model
            stack.append(layers.Dropout(0.5))
        stack += [layers.Dense(units, activation="relu"), layers.Dense(1, activation=head)]
        model = keras.Sequential(stack)
        model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=1e-3), loss="binary_crossentropy")
        rng = np.random.default_rng(0)
        model.set_weights(
            [w if w.ndim > 1 else rng.normal(0, 0.05, w.shape).astype("float32") for w in model.get_weights()]
        )
        return model

    def save_outputs(model, name: str, size: int = 150) -> None:
        x = np.load(folder / f"x{size}.npy")
        first8 = [layer for layer in model.layers if not isinstance(layer, layers.InputLayer)][
            :8
        ]  # Functional's has it
        probe = keras.Model(model.inputs, [layer.output for layer in first8] + [model.outputs[0]])
        outputs = probe.predict(x, verbose=0)
        np.savez(folder / f"{name}.npz", x=x, y=outputs[-1], **{f"layer{i}": out for i, out in enumerate(outputs[:8])})

    model = seed()
    model.save(folder / "seed.keras")
    save_outputs(model, "seed")
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(folder / "weights_only.h5", "w") as f:  # what Keras 2's model.save_weights("w.h5") wrote
        legacy_h5_format.save_weights_to_hdf5_group(f, model)

    model = seed(dropout=True, fresh=False)
    model.save(folder / "dropout.h5")  # Keras 3's legacy HDF5 format, as Keras 2 and tf.keras wrote it
    save_outputs(model, "dropout")

    model = seed(size=180, fresh=False)
    model.save(folder / "size180.keras")
    save_outputs(model, "size180", 180)

    inputs = keras.Input((150, 150, 3), name="picture")  # a Functional model with names of its own
    x = inputs
    for i, n in enumerate((32, 64, 128, 128)):
        x = layers.Conv2D(n, 3, activation="relu", name=f"block{i}_conv")(x)
        x = layers.MaxPooling2D(name=f"block{i}_pool")(x)
    x = layers.Dense(512, activation="relu", name="hidden")(layers.Flatten(name="flat")(x))
    model = keras.Model(inputs, layers.Dense(1, activation="sigmoid", name="p_dog")(x))
    rng = np.random.default_rng(1)
    model.set_weights(
        [w if w.ndim > 1 else rng.normal(0, 0.05, w.shape).astype("float32") for w in model.get_weights()]
    )
    model.save(folder / "functional.keras")
    save_outputs(model, "functional")

    seed(filters=(64, 64, 128, 128)).save(folder / "wide_conv.keras")
    seed(units=256).save(folder / "wide_dense.h5")
    seed(filters=(32, 64, 128, 128, 128), size=190).save(folder / "extra_conv.keras")
    seed(head="linear").save(folder / "linear_head.keras")
    seed(padding="same").save(folder / "same_padding.h5")
    keras.backend.clear_session()  # the book's 2nd edition scales inside the model: catdog scales in preprocessing
    keras.Sequential([keras.Input((150, 150, 3)), layers.Rescaling(1 / 255), *seed().layers]).save(
        folder / "rescaling.keras"
    )


if __name__ == "__main__":
    make_keras_files(Path(sys.argv[1]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["seed.keras", "dropout.h5"])
def test_the_explorer_page_of_the_keras_seed_runs_it_as_keras(keras_dir, tmp_path, monkeypatch, name):
    """format=html of the seed's .keras file (and of the book's dropout model saved as .h5): in the page (headless
    Chromium), the network gives Keras's output on the same inputs, and the page resizes as the seed does
    (nearest)."""
    from tests.test_page import CHROMIUM, Opened

    if not CHROMIUM.exists():
        pytest.skip("needs the system Chromium (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    monkeypatch.chdir(tmp_path)
    assert export_main([f"ckpt={keras_dir / name}", "format=html", "out=seed.html"]) == 0
    keras_out = np.load(keras_dir / f"{Path(name).stem}.npz")
    pixels = np.round(keras_out["x"] * 255).astype(np.uint8)  # the inputs were pictures scaled by 1/255
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        opened = Opened(browser, tmp_path / "seed.html")
        assert opened.page.evaluate("window.catdog.network.preprocessing.interpolation") == "nearest"
        for picture, y in zip(pixels, keras_out["y"][:, 0], strict=True):
            assert opened.run_pixels(picture)["p_dog"] == pytest.approx(float(y), abs=1e-3)
        browser.close()
