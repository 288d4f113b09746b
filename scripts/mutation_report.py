"""The mutation score of each entry of [tool.mutmut] only_mutate, from mutmut's results under mutants/.

Score = killed (timeouts included, shown apart) / mutants checked; "no tests" counts against it (code no selected test runs), mutants
not checked yet are listed apart. When scripts/mutation.py checked a random sample (mutants/sample.txt), only the sample is
scored, with its 95% (Wilson) interval for the score of all the entry's mutants. `--survivors` lists the survivors' names
for `mutmut show NAME`.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import tomllib
from collections import Counter
from pathlib import Path

KILLED = ("killed", "timeout", "caught by type check")  # as mutmut's own score counts them
RUN_RECORD = Path("mutants") / "mutation-run.json"  # scripts/mutation.py's record of its last run


def results(root: Path) -> dict[str, dict[str, str]]:
    """{source file: {mutant name: status}} from mutmut's .meta files."""
    from mutmut.stats import status_by_exit_code  # the `mutation` extra: imported here so the scoring needs no mutmut

    out = {}
    for meta in sorted((root / "mutants").rglob("*.py.meta")):
        source = str(meta.relative_to(root / "mutants"))[: -len(".meta")]
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        out[source] = {name: status_by_exit_code[code] for name, code in codes.items()}
    return out


def wilson(killed: int, checked: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% score interval of a sample with `killed` of `checked` mutants killed (Wilson's, fine near 100%)."""
    if not checked:
        return (0.0, 1.0)
    p = killed / checked
    centre = (p + z * z / (2 * checked)) / (1 + z * z / checked)
    half = z * math.sqrt(p * (1 - p) / checked + z * z / (4 * checked * checked)) / (1 + z * z / checked)
    return (max(0.0, centre - half), min(1.0, centre + half))


def sampled(root: Path, found: dict[str, dict[str, str]]) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
    """`found` cut to the sample in mutants/sample.txt (when there is one), and each file's count of all mutants."""
    population = {path: len(named) for path, named in found.items()}
    listed = root / "mutants" / "sample.txt"
    if not listed.is_file():
        return found, population
    keep = set(listed.read_text().split())
    return {path: {n: s for n, s in named.items() if n in keep} for path, named in found.items()}, population


def report(root: Path, survivors: bool, files: bool = False) -> list[str]:
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
    found, population = sampled(root, results(root))
    if files:  # one row per mutated file (a run limited to some files scores them apart)
        patterns = [path for path in found if any(fnmatch.fnmatch(path, p) for p in patterns)]
    lines = [f"{'code mutated':40} {'killed':>7} {'(timeout)':>9} {'survived':>8} {'no tests':>8} {'other':>6} "
             f"{'unchecked':>9} {'score':>6} {'95% interval':>13} {'of mutants':>10}"]
    for pattern in patterns:
        statuses = Counter(s for path, named in found.items() if fnmatch.fnmatch(path, pattern) for s in named.values())
        killed = sum(statuses[s] for s in KILLED)
        unchecked = statuses["not checked"]
        other = sum(statuses.values()) - killed - statuses["survived"] - statuses["no tests"] - unchecked
        checked = sum(statuses.values()) - unchecked
        score = f"{killed / checked:.1%}" if checked else "-"
        low, high = wilson(killed, checked)
        interval = f"{low:.1%}–{high:.1%}" if checked else "-"
        everything = sum(n for path, n in population.items() if fnmatch.fnmatch(path, pattern))
        lines.append(f"{pattern:40} {killed:>7} {statuses['timeout']:>9} {statuses['survived']:>8} "
                     f"{statuses['no tests']:>8} {other:>6} {unchecked:>9} {score:>6} {interval:>13} {everything:>10}")
        if survivors:
            lines += [f"    {name}  ({status})" for path, named in found.items() if fnmatch.fnmatch(path, pattern)
                      for name, status in named.items() if status not in KILLED and status != "not checked"]
    return lines


def last_run(root: Path) -> str | None:
    """One line on the last `scripts/mutation.py` run: what it checked, how, and its wall time."""
    record = root / RUN_RECORD
    if not record.is_file():
        return None
    run = json.loads(record.read_text())
    what = "every mutant" if run["all"] else f"sample of seed {run['seed']}" + (", survivors again" if run["recheck"] else "")
    hours, minutes = divmod(round(run["seconds"] / 60), 60)
    return (f"last run: {run['checked']} mutants checked ({what}), {run['children']} at once on {run['cpus']} CPUs, "
            f"test budget {run['test_budget']:g} s: {hours} h {minutes:02d} min wall, set-up included")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the folder holding pyproject.toml and mutants/")
    parser.add_argument("--survivors", action="store_true", help="list every mutant not killed")
    parser.add_argument("--files", action="store_true", help="a row per mutated file")
    args = parser.parse_args()
    print("\n".join(report(args.root, args.survivors, args.files)))
    if line := last_run(args.root):
        print(line)


if __name__ == "__main__":
    main()
