"""`make mutation`: mutmut over a seeded random sample of the mutants of each [tool.mutmut] only_mutate entry.

Every mutant of data, training and export verification is ~10,000 mutants; the ones that only training tests can
kill cost seconds to minutes each on 2 cores, so all of them take many hours. A uniform random sample of each entry
(stratified: each entry gets its share, at least `--min-per-entry`) gives each entry's score with a confidence
interval in a run meant to fit the two-hour goal (docs/tests.md says what was measured); `--all` checks every
mutant. The same seed picks the same mutants again, so a rerun after new tests (mutmut keeps results; `--recheck`
checks the sample's survivors again) is comparable.

mutmut generates the mutants first (its own functions, mutmut pinned in pyproject.toml's `mutation` extra), then
`mutmut run NAMES` checks the sample; scripts/mutation_report.py scores it.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import random
import subprocess
import sys
import time
import tomllib
from pathlib import Path

MUTMUT_VERSION = "3.8.1"


def generate() -> dict[str, list[str]]:
    """Write mutants/ and return {source file: its mutants' names} (mutmut's generation step alone)."""
    import mutmut
    from mutmut import __main__ as cli
    from mutmut.mutation.trampoline import set_mutant_under_test

    if mutmut.__version__ != MUTMUT_VERSION:  # the generation step is mutmut's internals: a version it was read for
        sys.exit(f"scripts/mutation.py was written for mutmut {MUTMUT_VERSION}, found {mutmut.__version__}: "
                 f'pip install -e ".[mutation]"')
    set_mutant_under_test("mutant_generation")
    Path("mutants").mkdir(exist_ok=True)
    cli.copy_src_dir()
    cli.copy_also_copy_files()
    cli.setup_source_paths()
    cli.store_lines_covered_by_tests()
    cli.create_mutants(os.cpu_count() or 2)
    names = {}
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        source = str(meta.relative_to("mutants"))[: -len(".meta")]
        names[source] = sorted(json.loads(meta.read_text())["exit_code_by_key"])
    return names


def sample(names: dict[str, list[str]], patterns: list[str], size: int, min_per_entry: int, seed: int) -> list[str]:
    """`size` mutants in all, each entry of `patterns` getting its share (at least `min_per_entry`, at most all)."""
    entries = {p: sorted(n for path, found in names.items() if fnmatch.fnmatch(path, p) for n in found) for p in patterns}
    total = sum(len(found) for found in entries.values()) or 1
    rng = random.Random(seed)
    picked = []
    for pattern, found in entries.items():
        share = min(len(found), max(min_per_entry, round(size * len(found) / total)))
        picked += rng.sample(found, share)
    return sorted(picked)


def survivors(picked: list[str]) -> list[str]:
    """The picked mutants checked and not killed (to check again after tests were added)."""
    from mutation_report import KILLED, results  # scripts/ is on the path of a script run from it

    statuses = {name: status for named in results(Path(".")).values() for name, status in named.items()}
    return [name for name in picked if statuses.get(name, "not checked") not in (*KILLED, "not checked")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=800, help="mutants in the sample (default 800)")
    parser.add_argument("--min-per-entry", type=int, default=150, help="at least this many of each entry")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all", action="store_true", help="every mutant (many hours on 2 cores)")
    parser.add_argument("--recheck", action="store_true", help="check the sample's survivors again")
    parser.add_argument("--children", type=int, default=2, help="mutants checked at once")
    parser.add_argument("--test-budget", type=float, default=30.0,
                        help="seconds of a mutant's fastest tests (measured) to run at most (tests/conftest.py)")
    args = parser.parse_args()

    started = time.monotonic()
    patterns = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
    names = generate()
    picked = [n for found in names.values() for n in found] if args.all else sample(
        names, patterns, args.size, args.min_per_entry, args.seed)
    Path("mutants/sample.txt").write_text("\n".join(picked) + "\n")  # what the report scores
    todo = survivors(picked) if args.recheck else picked
    print(f"mutation: {len(todo)} of {sum(map(len, names.values()))} mutants (seed {args.seed})", flush=True)
    code = 0
    if todo:
        command = [str(Path(sys.executable).parent / "mutmut"), "run", "--max-children", str(args.children), *todo]
        env = {**os.environ, "MUTATION_TEST_BUDGET": str(args.test_budget), "OMP_NUM_THREADS": "1"}
        code = subprocess.call(command, env=env)
    # the whole run's wall time, mutmut's set-up included: the report shows it beside the scores
    from mutation_report import RUN_RECORD  # scripts/ is on the path of a script run from it

    RUN_RECORD.write_text(json.dumps({"seed": args.seed, "all": args.all, "recheck": args.recheck,
                                      "checked": len(todo), "children": args.children,
                                      "test_budget": args.test_budget, "cpus": os.cpu_count(),
                                      "seconds": round(time.monotonic() - started)}) + "\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
