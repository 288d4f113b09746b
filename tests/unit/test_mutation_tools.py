"""`make mutation`'s own parts: the stratified sample, the score's interval, and a mutant's test order and budget."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import conftest

REPO = Path(__file__).resolve().parents[2]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MUTATION = _script("mutation")
REPORT = _script("mutation_report")

NAMES = {
    "peftsft/data/a.py": [f"peftsft.data.a.x_f__mutmut_{i}" for i in range(600)],
    "peftsft/data/b.py": [f"peftsft.data.b.x_g__mutmut_{i}" for i in range(200)],
    "peftsft/training/c.py": [f"peftsft.training.c.x_h__mutmut_{i}" for i in range(180)],
    "peftsft/artifacts/export/verify.py": [f"peftsft.artifacts.export.verify.x_v__mutmut_{i}" for i in range(20)],
}
PATTERNS = ["peftsft/data/*", "peftsft/training/*", "peftsft/artifacts/export/verify.py"]


def test_each_entry_gets_its_share_at_least_the_minimum_and_never_more_than_it_has():
    picked = MUTATION.sample(NAMES, PATTERNS, size=100, min_per_entry=30, seed=0)
    counts = {p: sum(n.startswith(p.split("*")[0].replace("/", ".").removesuffix(".py")) for n in picked)
              for p in PATTERNS}
    assert counts == {"peftsft/data/*": 80, "peftsft/training/*": 30, "peftsft/artifacts/export/verify.py": 20}
    assert len(set(picked)) == len(picked)  # no mutant twice
    # the data entry's share is spread over both of its files, not the first file's first names
    assert any(".data.b." in n for n in picked) and any(n.endswith(tuple(f"_{i}" for i in range(300, 600)))
                                                          for n in picked if ".data.a." in n)


def test_the_same_seed_picks_the_same_mutants_and_another_seed_others():
    first = MUTATION.sample(NAMES, PATTERNS, size=100, min_per_entry=30, seed=0)
    assert MUTATION.sample(NAMES, PATTERNS, size=100, min_per_entry=30, seed=0) == first
    assert MUTATION.sample(NAMES, PATTERNS, size=100, min_per_entry=30, seed=1) != first


def test_a_sample_as_large_as_everything_is_everything():
    picked = MUTATION.sample(NAMES, PATTERNS, size=10_000, min_per_entry=0, seed=0)
    assert sorted(picked) == sorted(n for found in NAMES.values() for n in found)


def test_the_score_interval_is_wilsons():
    low, high = REPORT.wilson(90, 100)
    assert (round(low, 3), round(high, 3)) == (0.826, 0.945)  # Wilson's 95% interval for 90 of 100
    low, high = REPORT.wilson(50, 50)
    assert high == 1.0 and round(low, 3) == 0.929  # all killed: the interval still says how sure
    assert REPORT.wilson(0, 0) == (0.0, 1.0)


def test_only_the_sample_is_scored_and_the_population_is_counted(tmp_path):
    (tmp_path / "mutants").mkdir()
    (tmp_path / "mutants" / "sample.txt").write_text("m1\nm3\n")
    found = {"peftsft/data/a.py": {"m1": "killed", "m2": "not checked", "m3": "survived"}}
    kept, population = REPORT.sampled(tmp_path, found)
    assert kept == {"peftsft/data/a.py": {"m1": "killed", "m3": "survived"}}
    assert population == {"peftsft/data/a.py": 3}


def _items(*names):
    return [SimpleNamespace(nodeid=name) for name in names]


def _run_order(tmp_path, monkeypatch, durations, budget=None):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mutation-test-durations.json").write_text(json.dumps(durations))
    if budget is not None:
        monkeypatch.setenv("MUTATION_TEST_BUDGET", str(budget))
    deselected = []
    config = SimpleNamespace(hook=SimpleNamespace(pytest_deselected=lambda items: deselected.extend(items)))
    items = _items("slow", "new", "fast", "middle")
    conftest._fastest_first(config, items)
    return [i.nodeid for i in items], [i.nodeid for i in deselected]


def test_a_mutants_tests_run_fastest_first_a_new_test_first_of_all(tmp_path, monkeypatch):
    order, dropped = _run_order(tmp_path, monkeypatch, {"slow": 9.0, "fast": 0.1, "middle": 2.0})
    assert order == ["new", "fast", "middle", "slow"] and dropped == []


def test_the_test_budget_keeps_the_fastest_tests_that_fit_and_always_one(tmp_path, monkeypatch):
    order, dropped = _run_order(tmp_path, monkeypatch, {"slow": 9.0, "fast": 0.1, "middle": 2.0}, budget=2.1)
    assert order == ["new", "fast", "middle"] and dropped == ["slow"]
    order, dropped = _run_order(tmp_path, monkeypatch, {"slow": 9.0, "new": 5.0, "fast": 3.0, "middle": 4.0},
                                budget=1.0)
    assert order == ["fast"] and dropped == ["middle", "new", "slow"]


def test_recheck_takes_the_checked_mutants_not_killed(tmp_path, monkeypatch):
    stats = pytest.importorskip("mutmut.stats")
    code = {status: c for c, status in stats.status_by_exit_code.items()}
    meta = tmp_path / "mutants" / "peftsft" / "data" / "a.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"exit_code_by_key": {
        "k": code["killed"], "s": code["survived"], "n": code["no tests"], "u": None, "t": code["timeout"]}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    assert MUTATION.survivors(["k", "s", "n", "u", "t", "unknown"]) == ["s", "n"]


def test_the_report_says_what_the_last_run_checked_and_its_wall_time(tmp_path):
    assert REPORT.last_run(tmp_path) is None
    (tmp_path / "mutants").mkdir()
    (tmp_path / "mutants" / "mutation-run.json").write_text(json.dumps(
        {"seed": 2, "all": False, "recheck": False, "checked": 800, "children": 2, "test_budget": 30.0, "cpus": 2,
         "seconds": 4380}))
    assert REPORT.last_run(tmp_path) == ("last run: 800 mutants checked (sample of seed 2), 2 at once on 2 CPUs, "
                                         "test budget 30 s: 1 h 13 min wall, set-up included")


def test_a_run_records_what_it_checked_for_the_report(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text(f"[tool.mutmut]\nonly_mutate = {PATTERNS!r}\n")
    (tmp_path / "mutants").mkdir()
    calls = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    monkeypatch.setattr(MUTATION, "generate", lambda: NAMES)
    monkeypatch.setattr(MUTATION.subprocess, "call", lambda command, env: calls.append(command) or 0)
    monkeypatch.setattr("sys.argv", ["mutation.py", "--size", "100", "--min-per-entry", "30", "--seed", "3"])
    with pytest.raises(SystemExit) as done:
        MUTATION.main()
    assert done.value.code == 0 and len(calls[0]) == 4 + 130
    run = json.loads((tmp_path / "mutants" / "mutation-run.json").read_text())
    assert {k: run[k] for k in ("seed", "all", "recheck", "checked", "children", "test_budget")} == {
        "seed": 3, "all": False, "recheck": False, "checked": 130, "children": 2, "test_budget": 30.0}
    assert REPORT.last_run(tmp_path).startswith("last run: 130 mutants checked (sample of seed 3), 2 at once")


def _sibling_survives_a_failed_build(release: bool) -> bool:
    """mutmut's fork server, as in mutmut/workers/isolation.py: its SIGTERM handler SIGKILLs the test processes it runs.
    One mutant's test process (forked after the handler) runs a sharded build whose first shard fails, so the build
    terminates the other shards; the other test process is a `sleep`."""
    import os
    import signal
    import subprocess
    import time

    sibling = subprocess.Popen(["sleep", "30"])
    server = os.fork()
    if server == 0:
        def terminate(signum, frame):
            os.kill(sibling.pid, signal.SIGKILL)
            os._exit(0)

        signal.signal(signal.SIGTERM, terminate)
        test_process = os.fork()
        if test_process == 0:
            if release:
                conftest.release_inherited_signals()
            from peftsft.data import parallel

            def work(shard, start, end, advance):
                if shard == 0:
                    raise ValueError("bad row")
                time.sleep(5)

            meter = SimpleNamespace(advance=lambda n: None, update=lambda n: None)
            with pytest.raises(ValueError):
                parallel.run_sharded(work, 30, 3, meter)
            os._exit(0)
        os.waitpid(test_process, 0)
        os._exit(0)
    os.waitpid(server, 0)
    try:
        return sibling.wait(timeout=0.5) is None
    except subprocess.TimeoutExpired:
        return True
    finally:
        sibling.kill()
        sibling.wait()


def test_a_mutants_data_workers_do_not_kill_the_mutant_checked_beside_it():
    assert _sibling_survives_a_failed_build(release=True)
    assert not _sibling_survives_a_failed_build(release=False)  # the bug the release mends, still in mutmut


def test_each_mutants_test_session_releases_the_fork_servers_signals(monkeypatch):
    import signal

    def handler(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, handler)
    try:
        monkeypatch.setattr(conftest, "UNDER_MUTMUT", False)
        conftest.pytest_sessionstart(None)
        assert signal.getsignal(signal.SIGTERM) is handler  # a plain test run keeps what it has
        monkeypatch.setattr(conftest, "UNDER_MUTMUT", True)
        conftest.pytest_sessionstart(None)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)
