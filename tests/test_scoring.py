"""catdog.scoring: the batches that predict and evaluate score, in worker processes or in this one."""

import torch

from catdog.fast import FastCatDogCNN, fast
from catdog.model import CatDogCNN
from catdog.preprocess import Preprocessing, cores
from catdog.scoring import Scorer, score_files, share_cores
from tests.conftest import jpeg_bytes


def network() -> FastCatDogCNN:
    """What predict and evaluate score with: ``Weights.model(fast=True)``."""
    torch.manual_seed(0)
    return fast(CatDogCNN().eval())


def test_workers_score_as_this_process_does_and_report_bad_files(tmp_path):
    paths = []
    for i in range(7):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(jpeg_bytes(i, size=(90, 70)) if i != 4 else b"not a picture")
    model = network()
    runs = [list(score_files(model, paths, Preprocessing(), 3, workers)) for workers in (0, 2)]
    assert runs[0] == runs[1]  # the same batches, indices, logits (exactly) and errors
    indices = [i for batch, _, _ in runs[0] for i in batch]
    failed = [f for _, _, errors in runs[0] for f in errors]
    assert indices == [0, 1, 2, 3, 5, 6] and len(failed) == 1 and failed[0][0] == 4 and "cannot read" in failed[0][1]
    logits = torch.tensor([v for _, values, _ in runs[0] for v in values])
    x = torch.stack([Preprocessing()(paths[i]) for i in indices])
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x)[:, 0])


def test_bf16_scores_as_bfloat16_autocast_of_the_float32_network():
    model = network()
    pictures = torch.randint(0, 256, (5, 150, 150, 3), dtype=torch.uint8)
    x = pictures.permute(0, 3, 1, 2).float().mul_(1 / 255)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = model(x)[:, 0].float()
    bf16 = Scorer(model, precision="bf16-mixed")
    assert torch.equal(bf16(pictures), autocast)
    assert next(model.parameters()).dtype == torch.float32  # the caller's network is left as it was
    assert not torch.equal(Scorer(model)(pictures), autocast)  # float32 is another computation


def test_scoring_workers_share_the_cores():
    threads = torch.get_num_threads()
    try:
        share_cores(1)
        assert torch.get_num_threads() == cores()
        share_cores(cores() + 1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
