"""A Hydra callback that writes ``summary.csv`` and ``summary.md`` at the root of a multirun sweep."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from catdog.files import natural_key, write_text

COLUMNS = ("job", "overrides", "status", "best_val_acc", "test_acc", "epochs", "seconds", "error")


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder (``<sweep>/<n>/``): its overrides and what its ``metrics.json`` says."""
    rows = []
    jobs = [f.parent.parent for f in sweep_dir.glob("*/.hydra/overrides.yaml")]
    for job in sorted(jobs, key=lambda j: natural_key(j.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        metrics_file = job / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {"status": "failed or running"}
        row = {"job": job.name, "overrides": " ".join(OmegaConf.load(overrides_file))}
        row.update({k: metrics.get(k, "") for k in COLUMNS[2:]})
        rows.append(row)
    return rows


def write_summary(sweep_dir: Path) -> None:
    rows = job_rows(sweep_dir)
    if not rows:
        return
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(sweep_dir / "summary.csv", table.getvalue())

    def cell(column: str, value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.1f}" if column == "seconds" else f"{value:.4f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(c, row[c]) for c in COLUMNS) + " |" for row in rows]
    write_text(sweep_dir / "summary.md", "\n".join(lines) + "\n")


class SweepSummary(Callback):
    """Rewrites the summary after each job (so a crashed sweep still has one) and at the end of the sweep.

    Reads the job folders rather than in-memory results, so it works the same with the joblib and
    submitit launchers, whose jobs run in other processes."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode is not None and str(config.hydra.mode) == "RunMode.MULTIRUN":
            write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summary(Path(config.hydra.sweep.dir))
        print(f"Sweep summary: {Path(config.hydra.sweep.dir) / 'summary.md'}")
