from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_install_and_test_commands():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    install, test = block[0].split("#")[0].strip(), block[-1].split("#")[0].strip()
    assert install.startswith("pip install") and test.startswith("python -m pytest")
    assert install in ci and test in ci
