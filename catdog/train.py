"""Train the seed's CNN: ``catdog-train [key=value ...]`` (``python train.py`` in a checkout); the settings are in
catdog/conf/train.yaml and its groups (data, model, trainer, callbacks, logger, experiment, hparams_search).

Instantiates the datamodule, the LightningModule, the trainer, its callbacks and loggers from the config, fits,
tests the best checkpoint and writes ``metrics.json`` into the run folder (outputs/<date>/<time>, or
multirun/<date>/<time>/<n> with ``-m``); returns ``optimized_metric`` to a sweeper."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from catdog.allocator import reuse_freed_memory
from catdog.cli import program, run
from catdog.files import write_text
from catdog.model import summary
from catdog.weights import newest


def train(cfg: DictConfig) -> float | None:
    """Instantiate -> fit -> test; returns ``cfg.optimized_metric`` for sweepers."""
    # Lightning is imported here, not at the top: it takes about twice as long to import as torch itself (python -X
    # importtime), which --help, --cfg job and a mistyped setting should not wait for.
    import pytorch_lightning as pl

    from catdog.module import set_tf32

    started = time.perf_counter()
    reuse_freed_memory()  # before the loader workers fork, so that they inherit it
    set_tf32(cfg.tf32)  # off: full float32 on a GPU, as Keras computes (PyTorch's default lets cuDNN use TF32)
    run_dir = Path(cfg.trainer.default_root_dir)
    if cfg.seed is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model)
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        print(summary(module.model))

    ckpt_path = cfg.ckpt_path
    if cfg.train and ckpt_path == "last":  # the newest last.ckpt of any run under outputs/ or multirun/
        ckpt_path = newest("checkpoints/last.ckpt")
        print(
            f"ckpt_path=last: resuming from {ckpt_path}" if ckpt_path else "ckpt_path=last: no last.ckpt yet; starting"
        )
    elif cfg.train and ckpt_path:
        print(f"resuming from {ckpt_path}")
    try:
        if cfg.train:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        checkpoint = next((c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)), None)
        best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
        tested = best if cfg.train else ckpt_path  # None after fit: the weights as training left them
        if cfg.test and cfg.train and best is None:
            print("no best checkpoint (callbacks.checkpoint=null): testing the last weights")
        results = trainer.test(module, datamodule=datamodule, ckpt_path=tested)[0] if cfg.test else {}
    except SystemExit:
        if trainer.interrupted:  # Ctrl-C: Lightning stopped cleanly and exits
            interrupted(trainer, run_dir, started)
        raise

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val_", "test_"))}
    metrics.update({k: float(v) for k, v in results.items()})
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics["best_val_acc"] = float(checkpoint.best_model_score)
    metrics.update(epochs=trainer.current_epoch, best_checkpoint=best, seconds=round(time.perf_counter() - started, 1))
    if cfg.test:
        metrics["tested"] = tested or "last weights"
    metrics["status"] = "completed"
    if trainer.is_global_zero:
        write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        print(f"Run folder: {run_dir}\n" + json.dumps(metrics, indent=2))
    value = metrics.get(cfg.optimized_metric)
    return None if value is None else float(value)


def interrupted(trainer: Any, run_dir: Path, started: float) -> NoReturn:
    """After Ctrl-C: ``metrics.json`` with status ``interrupted``, one line saying how to resume, exit code 130."""
    from catdog.callbacks import LastCheckpoint  # imports Lightning: see train()

    last = next((c.path for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
    then = "no checkpoint (callbacks.last=null)" if last is None else "no checkpoint saved yet"
    if last is not None and last.exists():
        args = [a for a in sys.argv[1:] if not a.startswith("ckpt_path=")] + ["ckpt_path=last"]
        then = f"resume with {program('train')} {shlex.join(args)}"
    else:
        last = None
    epoch, step = trainer.current_epoch, trainer.global_step
    if trainer.is_global_zero:
        seconds = round(time.perf_counter() - started, 1)
        status = dict(status="interrupted", epoch=epoch, step=step, checkpoint=last and str(last), seconds=seconds)
        write_text(run_dir / "metrics.json", json.dumps(status, indent=2) + "\n")
        print(f"interrupted at epoch {epoch}, step {step}; {then}", file=sys.stderr, flush=True)
    sys.exit(130)


def main(argv: list[str] | None = None) -> int:
    """``catdog-train``: the command line (default ``sys.argv[1:]``); returns the exit code."""
    return run("train", train, argv)


if __name__ == "__main__":
    sys.exit(main())
