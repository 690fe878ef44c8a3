"""How the entry points fail: one line naming the problem, exit code 2; the traceback only on request."""

from __future__ import annotations

import errno
import functools
import json
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from catdog import CatDogError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def _wants_traceback(args: list[str]) -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or "debug=true" in args


def check_overrides(config_name: str, args: list[str] | None = None) -> None:
    """Compose the config with the command line's overrides before Hydra runs the job, so that a mistyped key,
    a bad value or an unknown group option is one ``error:`` line and exit code 2 instead of Hydra's message.
    Multirun and Hydra's own flags (``-m``, ``--cfg``, ...) are left to Hydra."""
    args = sys.argv[1:] if args is None else args
    if any(a.startswith("-") for a in args) or _wants_traceback(args):
        return
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(config_name, overrides=[a for a in args if not a.startswith(("hydra.", "hydra/"))])
    except Exception as err:
        first = [line.strip() for line in str(err).strip().splitlines() if line.strip()][:2]
        print(f"error: {' '.join(first)} (python {Path(sys.argv[0]).name} --help lists the settings)", file=sys.stderr)
        sys.exit(2)


def _user_error(err: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (which keeps its traceback)."""
    if type(err).__name__ == "InstantiationException" and err.__cause__ is not None:
        return _user_error(err.__cause__)  # hydra.utils.instantiate wraps what the target raised
    if isinstance(err, CatDogError):
        return str(err)
    if isinstance(err, pickle.UnpicklingError):  # torch.load(weights_only=True) refused something
        return "refused to load a checkpoint that holds more than weights and plain data (it could run code)"
    if isinstance(err, FileNotFoundError):
        return f"not found: {err.filename or err}"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"no space left on device ({err}); free some space, then resume with ckpt_path=last"
    if type(err).__name__ == "MissingMandatoryValue":  # e.g. visualize.py without image=
        return f"{err.full_key} is required: add {err.full_key}=... to the command line"
    if type(err).__name__ == "MisconfigurationException":  # Lightning: e.g. accelerator=gpu without a GPU
        return str(err).strip().splitlines()[0]
    return None


def user_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task function: user errors print ``error: ...`` and exit 2, unless ``debug=true``
    or ``HYDRA_FULL_ERROR=1`` asks for the full traceback."""

    @functools.wraps(main)
    def wrapper(cfg: Any) -> Any:
        try:
            return main(cfg)
        except Exception as err:
            message = _user_error(err)
            if _in_multirun():  # one failed job must not stop the sweep: record it and return NaN
                if message is None:
                    traceback.print_exc()
                _record_failure(message or f"{type(err).__name__}: {err}")
                return float("nan")
            if message is None or cfg.get("debug") or _wants_traceback([]):
                raise
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _record_failure(message: str) -> None:
    """The job's ``metrics.json`` says it failed and why; the sweep summary reads it."""
    from hydra.core.hydra_config import HydraConfig

    from catdog.files import write_text

    print(f"error: {message}", file=sys.stderr)
    status = {"status": "failed", "error": message}
    write_text(Path(HydraConfig.get().runtime.output_dir) / "metrics.json", json.dumps(status, indent=2) + "\n")


def run_config(config_name: str, run: Callable[[Any], Any], argv: list[str] | None = None) -> int:
    """A module's command line (``python -m catdog.evaluate key=value ...``): compose ``conf/<config_name>.yaml``
    with the shared groups (data, model) and the overrides, then ``run(cfg)``. No run folder is made. User
    errors and bad keys or values are one ``error:`` line and exit code 2; ``debug=true`` shows the traceback."""
    from hydra import compose, initialize_config_dir

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=args)
    except Exception as err:
        first = [line.strip() for line in str(err).strip().splitlines() if line.strip()][:2]
        print(f"error: {' '.join(first)} (see conf/{config_name}.yaml for the settings)", file=sys.stderr)
        return 2
    try:
        run(cfg)
    except Exception as err:
        message = _user_error(err)
        if message is None or cfg.get("debug") or _wants_traceback(args):
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
