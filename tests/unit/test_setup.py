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


def test_every_install_in_setup_goes_through_pip_install():
    installs = [line for line in SETUP.splitlines() if "pip install" in line and not line.lstrip().startswith("#")]
    assert all(line.startswith("pip_install ") or "-m pip install -q \"$@\"" in line or "echo" in line
               for line in installs), installs
    assert "|| true" not in "".join(line for line in SETUP.splitlines() if line.startswith("pip_install "))


def test_every_test_has_a_time_limit_and_the_end_to_end_runs_a_longer_one(pytestconfig):
    assert float(pytestconfig.getini("timeout")) >= 60  # pytest-timeout installed and configured
    e2e = (REPO / "tests" / "e2e" / "test_default_recipe.py").read_text()
    assert re.search(r"@pytest\.mark\.timeout\(\d{4,}\)", e2e)


def test_ci_runs_setup_first_and_stops_on_its_failure():
    assert "set -euo pipefail" in (REPO / ".ci" / "run").read_text() and "make test" in (REPO / ".ci" / "run").read_text()
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^test: setup\b", makefile, re.M) and re.search(r"^setup:\n\tbash scripts/setup.sh$", makefile, re.M)
    assert SETUP.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in SETUP
