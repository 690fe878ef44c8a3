"""Check against real Keras: the seed model's weights ported into ``CatDogCNN`` give Keras's output, and the
``ActivationRecorder`` records equal Keras's 8 intermediate outputs, to float32 precision.

    python bench/keras_parity.py [--keras-python .venv-keras/bin/python]

(The test suite checks the same against an independent NumPy implementation; this needs the Keras peer, see
bench/run.py.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from catdog.hooks import ActivationRecorder  # noqa: E402
from catdog.model import CatDogCNN, load_keras_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras-python", default=str(REPO / ".venv-keras" / "bin" / "python"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "seed.npz"
        out = subprocess.run(
            [args.keras_python, str(REPO / "bench" / "keras_peer.py"), "dump", "--out", str(dump)],
            capture_output=True,
            text=True,
            check=True,
        )
        names = json.loads(out.stdout.strip().splitlines()[-1])["layers"]
        data = dict(np.load(dump))
    model = CatDogCNN().eval()
    load_keras_weights(model, [data[f"w{i}"] for i in range(12)])
    with ActivationRecorder(model) as recorder, torch.no_grad():
        y = torch.sigmoid(model(torch.from_numpy(data["x"]).permute(0, 3, 1, 2))).numpy()
    print("| output | max abs difference | largest value |\n|---|---|---|")
    worst = 0.0
    for ours, keras_name in zip(recorder.records, names, strict=True):
        keras_nchw = data[f"out_{keras_name}"].transpose(0, 3, 1, 2)
        diff = float(np.abs(recorder.records[ours].numpy() - keras_nchw).max())
        scale = float(np.abs(keras_nchw).max())
        worst = max(worst, diff / scale)
        print(f"| {ours} (Keras {keras_name}) | {diff:.2e} | {scale:.3g} |")
    diff = float(np.abs(y - data["y"]).max())
    print(f"| sigmoid output | {diff:.2e} | {float(np.abs(data['y']).max()):.3g} |")
    print(f"largest difference relative to the layer's largest value: {worst:.1e}")
    sys.exit(0 if worst < 1e-5 and diff < 1e-5 else 1)


if __name__ == "__main__":
    main()
