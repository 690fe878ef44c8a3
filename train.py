"""Train the seed's CNN: ``python train.py [key=value ...]``; see conf/train.yaml for every setting."""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from catdog.cli import check_overrides, user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@user_errors
def main(cfg: DictConfig) -> float | None:
    """Compose -> instantiate -> fit -> test; returns ``cfg.optimized_metric`` for sweepers."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from catdog.allocator import reuse_freed_memory
    from catdog.checkpoints import newest
    from catdog.files import write_text
    from catdog.model import summary

    started = time.perf_counter()
    reuse_freed_memory()  # before the loader workers fork, so that they inherit it
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
    if cfg.train and ckpt_path == "last":  # resume the newest run of this project (e.g. after a crash)
        ckpt_path = newest("checkpoints/last.ckpt")
        print(
            f"ckpt_path=last: resuming from {ckpt_path}" if ckpt_path else "ckpt_path=last: no last.ckpt yet; starting"
        )
    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    results = {}
    if cfg.test:
        ckpt = best if cfg.train else ckpt_path
        results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt)[0]

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val_", "test_"))}
    metrics.update({k: float(v) for k, v in results.items()})
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics["best_val_acc"] = float(checkpoint.best_model_score)
    metrics.update(epochs=trainer.current_epoch, best_checkpoint=best, seconds=round(time.perf_counter() - started, 1))
    metrics["status"] = "completed"
    if trainer.is_global_zero:
        write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        print(f"Run folder: {run_dir}\n" + json.dumps(metrics, indent=2))
    value = metrics.get(cfg.optimized_metric)
    return None if value is None else float(value)


if __name__ == "__main__":
    check_overrides("train")
    main()
