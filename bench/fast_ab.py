"""``catdog.fast`` against another arrangement of the same network, in ONE process, steps alternating A, B, B, A, ...
so that a shared machine's changing load hits both sides alike; prints a Markdown table of medians.

    python bench/fast_ab.py                       # the plain network (channels_last) against fast() of it
    git show 14e994b:catdog/model.py > /tmp/old_model.py
    python bench/fast_ab.py --against /tmp/old_model.py   # an older catdog (relu_after_pool inside the model)

Rows: the training step (forward, BCE-with-logits, backward, Keras RMSprop) at ``--batch`` in float32 and
bf16-mixed, with freed memory reused as train.py does; scoring a batch of 16 without gradients on one thread, as
a ``catdog.predict`` worker does, in float32 and in bfloat16 (a bfloat16 copy, as ``catdog.scoring.Scorer``).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catdog.allocator import reuse_freed_memory  # noqa: E402
from catdog.fast import fast  # noqa: E402
from catdog.model import CatDogCNN  # noqa: E402
from catdog.module import KerasRMSprop  # noqa: E402


def other_network(against: Path | None, state: dict) -> torch.nn.Module:
    """Side A: the plain network in channels_last, or an older model.py's network in its fast arrangement."""
    if against is None:
        model = CatDogCNN()
        model.load_state_dict(state)
        return model.to(memory_format=torch.channels_last)
    spec = importlib.util.spec_from_file_location("other_model", against)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.CatDogCNN(relu_after_pool=True)
    model.load_state_dict(state)
    return model.to(memory_format=torch.channels_last)


def alternate(run, n: int, items: int) -> tuple[float, float, float]:
    """img/s of A and of B (medians of ``n`` calls each, after 2 of warm-up) and the median of the paired ratios
    B/A; the order within a pair alternates, so neither side always runs on the warmer caches."""
    times: dict[str, list[float]] = {"A": [], "B": []}
    for i in range(n + 2):
        for side in ("A", "B") if i % 2 == 0 else ("B", "A"):
            start = time.perf_counter()
            run(side)
            if i >= 2:
                times[side].append(time.perf_counter() - start)
    ratio = statistics.median(a / b for a, b in zip(times["A"], times["B"], strict=True))
    return items / statistics.median(times["A"]), items / statistics.median(times["B"]), ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, help="an older catdog/model.py (with relu_after_pool) as side A")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30, help="calls of each side per row")
    args = parser.parse_args()
    reuse_freed_memory()
    torch.manual_seed(0)
    plain = CatDogCNN()
    nets = {"A": other_network(args.against, plain.state_dict()), "B": fast(plain)}
    optimizers = {"A": KerasRMSprop(nets["A"].parameters()), "B": KerasRMSprop(plain.parameters())}
    x = torch.rand(args.batch, 3, 150, 150).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (args.batch, 1)).float()
    with torch.no_grad():  # the two sides are the same network
        torch.testing.assert_close(nets["B"](x), nets["A"](x), rtol=1e-5, atol=1e-6)

    def train_step(dtype: torch.dtype | None):
        def run(side: str) -> None:
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = F.binary_cross_entropy_with_logits(nets[side](x).float(), y)
            loss.backward()
            optimizers[side].step()
            optimizers[side].zero_grad(set_to_none=True)

        return run

    def score(dtype: torch.dtype):
        copies = {side: copy.deepcopy(net).eval().to(dtype) for side, net in nets.items()}
        pictures = torch.rand(16, 3, 150, 150).to(dtype).contiguous(memory_format=torch.channels_last)

        def run(side: str) -> None:
            with torch.no_grad():
                copies[side](pictures)

        return run

    a_name = f"{args.against.name} (relu_after_pool)" if args.against else "plain, channels_last"
    print(f"| measurement (img/s) | A: {a_name} | B: catdog.fast | B/A (median of pairs) |\n|---|---|---|---|")
    threads = torch.get_num_threads()
    rows = [
        (f"training step, batch {args.batch}, float32", train_step(None), args.batch, threads),
        (f"training step, batch {args.batch}, bf16-mixed", train_step(torch.bfloat16), args.batch, threads),
        ("scoring, batch 16, float32, 1 thread", score(torch.float32), 16, 1),
        ("scoring, batch 16, bfloat16, 1 thread", score(torch.bfloat16), 16, 1),
    ]
    for what, run, items, n_threads in rows:
        torch.set_num_threads(n_threads)
        a, b, ratio = alternate(run, args.steps, items)
        print(f"| {what} | {a:.1f} | {b:.1f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
