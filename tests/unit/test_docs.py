"""The docs build is strict: a broken link between pages, to an anchor, into benchmarks/results/ or from README.md
fails it (mkdocs.yml's validation settings and scripts/docs_hooks.py)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _copy_of_the_site_sources(root: Path) -> Path:
    root.mkdir()
    for name in ("mkdocs.yml", "README.md"):
        shutil.copy(REPO / name, root / name)
    (root / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "docs_hooks.py", root / "scripts")
    shutil.copytree(REPO / "docs", root / "docs")
    shutil.copytree(REPO / "benchmarks" / "results", root / "benchmarks" / "results")
    return root


def test_every_kind_of_broken_link_fails_the_docs_build(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (make test installs it)")
    root = _copy_of_the_site_sources(tmp_path / "repo")
    with open(root / "docs" / "speed.md", "a", encoding="utf-8") as page:
        page.write("\n[a](no-such-page.md) [b](memory-plan.md#no-such-heading) "
                   "[c](../benchmarks/results/reference/no-such-run.md) [d](../benchmarks/results/gguf_quants.md#nope)\n")
    with open(root / "README.md", "a", encoding="utf-8") as readme:
        readme.write("\n[e](docs/no-such-page.md) [f](docs/speed.md#no-such-heading) ![g](docs/ui/no-such.png)\n")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=root, env=env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    for target in ("no-such-page.md'", "'#no-such-heading'", "no-such-run.md'", "'#nope'", "'docs/no-such-page.md'",
                   "no anchor 'no-such-heading'", "'docs/ui/no-such.png'"):
        assert target in log, (target, log)
    assert "Aborted with 7 warnings in strict mode" in log, log  # the planted links, and nothing else
