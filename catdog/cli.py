"""How the entry points fail: one line naming the problem, exit code 2; the traceback only on request."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from catdog import CatDogError


def _user_error(err: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (which keeps its traceback)."""
    if type(err).__name__ == "InstantiationException" and err.__cause__ is not None:
        return _user_error(err.__cause__)  # hydra.utils.instantiate wraps what the target raised
    if isinstance(err, CatDogError):
        return str(err)
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
            if message is None or cfg.get("debug") or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    return wrapper
