"""One way into every command, and how every command fails.

``catdog-<name>`` (``python -m catdog.<name>``; ``python train.py`` and ``python visualize.py`` in a checkout) all go
through ``run(name, task)``: the command line is parsed with Hydra's own parser, ``catdog/conf/<name>.yaml`` is
composed once with its overrides, and ``task(cfg)`` runs as a Hydra job (``hydra.core.utils.run_job``: run folder,
logging, callbacks, ``${hydra:...}`` settings), or as a sweep with ``-m``. Hydra's flags (``--help``, ``--cfg job``,
``--hydra-help``, ``--info``) keep working.

The failure contract: a setting that does not compose (an unknown key, a malformed value, an unknown group option)
or an error the user can fix (``CatDogError``, a missing file, a full disk, ...) is one ``error: ...`` line on stderr
and exit code 2; ``debug=true`` or ``HYDRA_FULL_ERROR=1`` shows the traceback instead. Anything else is a bug and
keeps its traceback. In a sweep a failed job does not stop the others: its ``metrics.json`` says why.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Hydra's public API composes configs but has no way to run a job without ``@hydra.main``, whose error report is
# several lines and exit code 1; these are the pieces ``Hydra.run`` itself is made of (pinned: hydra-core 1.3).
from hydra import compose as hydra_compose
from hydra import initialize_config_dir, version
from hydra._internal.callbacks import Callbacks
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path, get_args_parser
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import run_job
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from catdog import CatDogError
from catdog.files import write_text

CONF_DIR = Path(__file__).resolve().parent / "conf"
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"  # two photos from Kaggle's Dogs vs. Cats training set
SAMPLES = {"cat": "cat.jpg", "dog": "dog.jpg"}
VERSION_BASE = "1.3"

Task = Callable[[DictConfig], Any]


class _UsageError(Exception):
    """A command line that argparse refuses (an unknown flag): one line, as every other user error."""


def run(name: str, task: Task, argv: Sequence[str] | None = None) -> int:
    """Run command ``name``: compose ``catdog/conf/<name>.yaml`` with ``argv`` (default: ``sys.argv[1:]``) and run
    ``task(cfg)`` in a Hydra job. Returns the exit code: 0, or 2 after a one-line error. A bug raises."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    wants_traceback = _wants_traceback(args_list)
    parser = get_args_parser()
    parser.prog = program(name)

    def refuse(message: str) -> None:
        raise _UsageError(message)

    parser.error = refuse  # type: ignore[method-assign]  # argparse would print its usage, then exit
    try:
        args = parser.parse_args(args_list)
        if args.config_path is not None or args.experimental_rerun is not None:
            raise _UsageError("--config-path and --experimental-rerun are not supported; use --config-dir")
    except _UsageError as err:
        return _refuse(f"{err} ({program(name)} --help lists the settings)")
    version.setbase(VERSION_BASE)
    config_name = args.config_name or name
    search_path = create_config_search_path(f"file://{CONF_DIR}")
    if args.config_dir is not None:  # the user's own configs beside catdog's, as Hydra's --config-dir adds them
        search_path.prepend("command-line", f"file://{Path(args.config_dir).resolve()}", SearchPathQuery("schema"))
    overrides = list(args.overrides)
    logs = _logging_state()
    hydra = Hydra.create_main_hydra2(task_name=name, config_search_path=search_path)
    try:
        shown, cfg = None, None
        try:
            if args.help:
                shown = help_text(hydra, name, config_name, overrides, task)
            elif args.hydra_help:
                hydra.hydra_help(config_name=config_name, args_parser=parser, args=args)
            elif args.cfg:
                hydra.show_cfg(config_name, overrides, cfg_type=args.cfg, package=args.package, resolve=args.resolve)
            elif args.info:
                hydra.show_info(args.info, config_name=config_name, overrides=overrides)
            elif args.shell_completion:
                hydra.shell_completion(config_name=config_name, overrides=overrides)
            elif args.multirun:
                _sweep(hydra, config_name, task, overrides + ["hydra.mode=MULTIRUN"])
            else:  # composed once, as Hydra.run does
                cfg = hydra.compose_config(config_name, overrides, run_mode=RunMode.RUN, with_log_configuration=True)
                if cfg.hydra.mode == RunMode.MULTIRUN:  # a config that asks for a sweep (hparams_search=optuna)
                    _sweep(hydra, config_name, task, overrides)
                    cfg = None
        except Exception as err:  # the config did not compose, or a sweep could not start
            if wants_traceback:
                raise
            return _refuse(f"{config_error(err)} ({program(name)} --help lists the settings)")
        if cfg is not None:
            return _run(hydra, config_name, cfg, task, wants_traceback)
    finally:
        GlobalHydra.instance().clear()
        _restore_logging(logs)
    if shown is not None:
        print(shown)
    return 0


def _run(hydra: Hydra, config_name: str, cfg: DictConfig, task: Task, wants_traceback: bool) -> int:
    """One job (as ``Hydra.run``): a task's user error is one line and exit code 2; a bug raises."""
    cfg.hydra.mode = RunMode.RUN
    failures: list[Exception] = []

    def job(job_cfg: DictConfig) -> Any:
        try:
            return task(job_cfg)
        except Exception as err:  # kept here: Hydra stores it in the job's return, which is private
            failures.append(err)
            raise

    callbacks = Callbacks(cfg)
    callbacks.on_run_start(config=cfg, config_name=config_name)
    result = run_job(
        task_function=job,
        config=cfg,
        job_dir_key="hydra.run.dir",
        job_subdir_key=None,
        hydra_context=HydraContext(config_loader=hydra.config_loader, callbacks=callbacks),
    )
    callbacks.on_run_end(config=cfg, config_name=config_name, job_return=result)
    if not failures:
        return 0
    err = failures[0]
    message = user_error(err)
    if message is None or wants_traceback or cfg.get("debug"):
        raise err
    return _refuse(message)


def _sweep(hydra: Hydra, config_name: str, task: Task, overrides: list[str]) -> None:
    """``-m``: every job of the sweep; a job that fails records why in its ``metrics.json`` and returns NaN (to a
    sweeper, the worst value), so the others still run."""

    def job(job_cfg: DictConfig) -> Any:
        try:
            return task(job_cfg)
        except Exception as err:
            message = user_error(err)
            if message is None or job_cfg.get("debug"):
                traceback.print_exc()
            message = message or f"{type(err).__name__}: {err}"
            print(f"error: {message}", file=sys.stderr)
            status = {"status": "failed", "error": message}
            write_text(Path(HydraConfig.get().runtime.output_dir) / "metrics.json", json.dumps(status, indent=2) + "\n")
            return float("nan")

    hydra.multirun(config_name=config_name, task_function=job, overrides=overrides)


def compose(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The settings of command ``name`` as its command line composes them, for running its task in-process (tests,
    notebooks): ``predict(compose("predict", ["image=cat.jpg"]))``. ``${hydra:...}`` settings resolve as in a run
    (``hydra.runtime.output_dir`` is ``hydra.run.dir``); nothing is written."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=VERSION_BASE, job_name=name):
        cfg = hydra_compose(name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(Path(cfg.hydra.run.dir).resolve())
    HydraConfig.instance().set_config(cfg)
    task_cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    OmegaConf.set_struct(task_cfg, True)
    return task_cfg


def help_text(hydra: Hydra, name: str, config_name: str, overrides: list[str], task: Task) -> str:
    """``--help``: what the command does (its module's docstring), its groups and every setting with its value."""
    cfg = hydra.compose_config(config_name, overrides, run_mode=RunMode.RUN, with_log_configuration=False)
    doc = (getattr(sys.modules.get(getattr(task, "__module__", None) or ""), "__doc__", None) or name).strip()
    lines = [doc, "", f"Settings are key=value; {CONF_DIR / (config_name + '.yaml')} explains each."]
    groups = sorted(group for group in cfg.hydra.runtime.choices if not group.startswith("hydra/"))
    if groups:
        lines += ["", "== Groups (group=option) =="]
        lines += [f"{g}: {', '.join(sorted(hydra.config_loader.get_group_options(g)))}" for g in groups]
    settings = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    lines += ["", "== Settings ==", OmegaConf.to_yaml(settings).rstrip()]
    lines += [
        "",
        "== Flags ==",
        "-m, --multirun   a sweep: key=a,b runs one job per value",
        "--cfg job        the settings as composed with the overrides, then exit",
        "--hydra-help     Hydra's own settings (hydra.run.dir, hydra/launcher, ...)",
        "debug=true       full tracebacks instead of one-line errors",
    ]
    return "\n".join(lines)


def image_setting(value: Any) -> str | list[str]:
    """An ``image=`` setting as paths: ``sample:cat`` and ``sample:dog`` name the photos that come with catdog, alone
    or in a list (``image=[sample:cat,me.jpg]``); anything else is a path, left as given."""

    def path(item: Any) -> str:
        item = str(item)
        if not item.startswith("sample:"):
            return item
        name = item.removeprefix("sample:")
        if name not in SAMPLES:
            known = ", ".join(f"sample:{n}" for n in SAMPLES)
            raise CatDogError(f"image={item}: there is no such sample photo; there are {known}")
        return str(SAMPLES_DIR / SAMPLES[name])

    if OmegaConf.is_list(value) or isinstance(value, list | tuple):
        return [path(item) for item in value]
    return path(value)


def program(name: str) -> str:
    """How the user started command ``name``, for the hints in its messages."""
    started = Path(sys.argv[0])
    if started.suffix != ".py" or started.name == "__main__.py":  # a console script, or called from Python
        return f"catdog-{name}"
    if started.resolve().parent == Path(__file__).resolve().parent:
        return f"python -m catdog.{name}"
    return f"python {started.name}"  # train.py, visualize.py in a checkout


def config_error(err: BaseException) -> str:
    """A composition error as one line; a list of options that follows a colon becomes ``a, b, c``."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines and err.__cause__ is not None:
        return config_error(err.__cause__)
    text, listing = "", False
    for line in lines[:12]:
        if line.startswith("Config search path"):  # Hydra's own paths: not the user's business
            break
        text += ", " if listing and not text.endswith(":") else " " if text else ""
        text += line
        listing = listing or line.endswith(":")
    return text or type(err).__name__


def user_error(err: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (which keeps its traceback)."""
    if type(err).__name__ == "InstantiationException" and err.__cause__ is not None:
        return user_error(err.__cause__)  # hydra.utils.instantiate wraps what the target raised
    if isinstance(err, CatDogError):
        return str(err)
    if isinstance(err, pickle.UnpicklingError):  # torch.load(weights_only=True) refused something
        return "refused to load a checkpoint that holds more than weights and plain data (it could run code)"
    if isinstance(err, FileNotFoundError):
        return f"not found: {err.filename or err}"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"no space left on device ({err}); free some space, then resume with ckpt_path=last"
    if type(err).__name__ == "MissingMandatoryValue":  # e.g. predict without image=
        return f"{err.full_key} is required: add {err.full_key}=... to the command line"
    if type(err).__name__ in ("InterpolationResolutionError", "InterpolationKeyError"):  # a bad ${...} in a value
        return config_error(err)
    if type(err).__name__ == "MisconfigurationException":  # Lightning: e.g. accelerator=gpu without a GPU
        return str(err).strip().splitlines()[0]
    return None


def _loggers() -> list[logging.Logger]:
    return [logging.root, *(x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger))]


def _logging_state() -> dict[logging.Logger, tuple]:
    return {x: (x.handlers[:], x.level, x.propagate, x.disabled) for x in _loggers()}


def _restore_logging(state: dict[logging.Logger, tuple]) -> None:
    """Undo the job's logging setup (Hydra configures the root logger for each job, on the streams of that moment), so
    that a command run in-process (a test, a notebook) leaves the caller's logging as it found it."""
    for logger in _loggers():
        handlers, level, propagate, disabled = state.get(logger, ([], logging.NOTSET, True, False))
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()  # e.g. the run folder's train.log
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled


def _wants_traceback(args: list[str]) -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or "debug=true" in args


def _refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2

