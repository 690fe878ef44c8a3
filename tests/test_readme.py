import importlib
import re
import shlex
from pathlib import Path

import pytest

from catdog.cli import CONF_DIR, compose

REPO = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"(?:python (train|visualize)\.py|python -m catdog\.(\w+)|catdog-(\w+))(?=\s|$)(.*)")


def test_ci_runs_the_readme_install_and_test_commands():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    install, test = block[0].split("#")[0].strip(), block[-1].split("#")[0].strip()
    assert install.startswith("pip install") and test.startswith("python -m pytest")
    assert install in ci and test in ci


def readme_commands() -> list[tuple[str, list[str], str]]:
    """Each catdog command line in the README's bash blocks: (command, its overrides, the line)."""
    readme = (REPO / "README.md").read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in block.splitlines():
            match = COMMAND.match(line.strip())
            if match is None:
                continue
            name = next(group for group in match.groups()[:3] if group)
            args = shlex.split(match.group(4).split(" #")[0])
            sweep = "-m" in args
            overrides = []
            for arg in args:
                if arg.startswith("-"):  # -m, --cfg job, ...: flags, not settings
                    continue
                if arg.startswith("[") and arg.endswith("]"):  # [key=value]: an optional setting, shown
                    arg = arg[1:-1]
                arg = re.sub(r"<[^>]*>", "x", arg)  # <hex>: a placeholder
                if sweep:  # key=a,b: each job gets one of the values
                    key, _, value = arg.partition("=")
                    arg = f"{key}={value.split(',')[0]}" if not value.startswith("[") else arg
                overrides.append(arg)
            found.append((name, overrides, line.strip()))
    return found


def test_every_command_line_in_the_readme_composes():
    """A setting renamed or a group removed fails here before a reader finds out."""
    commands = readme_commands()
    assert {"train", "visualize", "predict", "evaluate", "atlas", "export", "prepare"} <= {c for c, _, _ in commands}
    for name, overrides, line in commands:
        try:
            compose(name, overrides)
        except Exception as err:
            pytest.fail(f"README: {line!r} does not compose: {err}")


def test_every_console_script_is_a_command_with_its_settings():
    section = (REPO / "pyproject.toml").read_text().split("[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    scripts = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"', section, re.M))  # tomllib is Python 3.11+
    assert set(scripts) >= {f"catdog-{n}" for n in ("train", "visualize", "predict", "evaluate", "atlas", "export")}
    for script, target in scripts.items():
        module, _, function = target.partition(":")
        name = script.removeprefix("catdog-")
        assert module == f"catdog.{name}" and callable(getattr(importlib.import_module(module), function))
        assert (CONF_DIR / f"{name}.yaml").is_file()
