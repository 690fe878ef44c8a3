"""Check against real Keras: the seed model saved by Keras (``.keras`` and legacy ``.h5``) and opened by catdog's
reader (``load_weights``, h5py only) gives Keras's output, and the ``ActivationRecorder`` records equal Keras's 8
intermediate outputs, to float32 precision.

    python bench/keras_parity.py [--keras-python .venv-keras/bin/python] [--backend tensorflow|torch|jax]

The Keras side runs in ``--keras-python`` (see bench/run.py for the TensorFlow environment); with this project's
dev install, ``--keras-python python --backend torch`` runs it on Keras's PyTorch backend, no TensorFlow needed.
(tests/test_keras_io.py checks the same on the PyTorch backend.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from catdog.hooks import ActivationRecorder  # noqa: E402
from catdog.weights import load_weights  # noqa: E402

# Run by the Keras python: the seed model (bench/keras_peer.py), random biases too, saved both ways, and its
# outputs for a random input: the first 8 layers' and the sigmoid's.
PEER = """
import sys
sys.path.insert(0, sys.argv[1])
import keras, numpy as np, keras_peer
keras.utils.set_random_seed(0)
model = keras_peer.seed_model()
rng = np.random.default_rng(0)
model.set_weights([w if w.ndim > 1 else rng.normal(0, 0.05, w.shape).astype("float32") for w in model.get_weights()])
folder = sys.argv[2]
model.save(folder + "/seed.keras")
model.save(folder + "/seed.h5")
x = rng.random((2, 150, 150, 3), dtype=np.float32)
probe = keras.Model(model.inputs, [layer.output for layer in model.layers[:8]] + [model.outputs[0]])
outputs = probe.predict(x, verbose=0)
np.savez(folder + "/outputs.npz", x=x, y=outputs[-1], **{f"layer{i}": o for i, o in enumerate(outputs[:8])})
print(keras.__version__, keras.backend.backend())
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras-python", default=str(REPO / ".venv-keras" / "bin" / "python"))
    parser.add_argument("--backend", help="KERAS_BACKEND for the Keras side (default: its own)")
    args = parser.parse_args()
    env = {**os.environ, **({"KERAS_BACKEND": args.backend} if args.backend else {})}
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [args.keras_python, "-c", PEER, str(REPO / "bench"), tmp],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        version, backend = out.stdout.split()[-2:]
        keras_out = dict(np.load(Path(tmp) / "outputs.npz"))
        x = torch.from_numpy(keras_out["x"]).permute(0, 3, 1, 2)
        results = {}
        for name in ("seed.keras", "seed.h5"):
            model = load_weights(Path(tmp) / name).model()
            with ActivationRecorder(model) as recorder, torch.no_grad():
                y = torch.sigmoid(model(x)).numpy()
            results[name] = ({k: v.numpy() for k, v in recorder.records.items()}, y)
    print(f"Keras {version} on {backend}: max abs difference of catdog's outputs from Keras's\n")
    print("| output | from seed.keras | from seed.h5 | largest value |\n|---|---|---|---|")
    worst = 0.0
    for i, layer in enumerate(results["seed.keras"][0]):
        keras_nchw = keras_out[f"layer{i}"].transpose(0, 3, 1, 2)
        scale = float(np.abs(keras_nchw).max())
        diffs = [float(np.abs(records[layer] - keras_nchw).max()) for records, _ in results.values()]
        worst = max(worst, *(d / scale for d in diffs))
        print(f"| {layer} | {diffs[0]:.2e} | {diffs[1]:.2e} | {scale:.3g} |")
    diffs = [float(np.abs(y - keras_out["y"]).max()) for _, y in results.values()]
    print(f"| sigmoid output | {diffs[0]:.2e} | {diffs[1]:.2e} | {float(np.abs(keras_out['y']).max()):.3g} |")
    print(f"\nlargest activation difference relative to the layer's largest value: {worst:.1e}")
    sys.exit(0 if worst < 1e-5 and max(diffs) < 1e-5 else 1)


if __name__ == "__main__":
    main()
