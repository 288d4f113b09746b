"""The dashboard as a product: numbers in human units, chart labels inside their charts, task-metric curves with the
best checkpoint marked, and the sweep view — checked in the real browser (headless Chromium, as test_ui.py), over a
real run with task metrics and a sweep dir holding a small Optuna study; damaged files never take a page down.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from peftsft.artifacts.ui.charts import line_chart, nice_ticks
from peftsft.artifacts.ui.fmt import human, tick_labels
from peftsft.core.units import scientific, significant, size
from tests.unit.test_ui import browser, get, server, shot, tab  # noqa: F401  (test_ui's fixtures; runs_root: here)

LONG_FLOAT = re.compile(r"\d\.\d{6,}|\d{7,}")  # 1.078574299812317, 4309372928: a number nobody formatted
PARAMS = [({"learning_rate": 2.1234e-4, "r": 8}, "complete", 0.8123456),
          ({"learning_rate": 1.5e-3, "r": 4}, "pruned", 0.3),
          ({"learning_rate": 9.9e-5, "r": 16}, "complete", 0.912345678),
          ({"learning_rate": 3e-3, "r": 8}, "complete", 0.55),
          ({"learning_rate": 5e-5, "r": 4}, "fail", None)]  # fmt: skip


# ---------------------------------------------------------------------------------------------- the formatter


@pytest.mark.parametrize("value, key, shown", [
    (1.078574299812317, "", "1.079"), (0.15, "eval_loss", "0.15"), (12345.6, "tokens_per_s", "12,346"),
    (4309372928, "peak_memory_bytes", "4.013 GiB"), (536870912, "size_bytes", "512 MiB"), (812, "bytes", "812 B"),
    (2e-4, "learning_rate", "2e-4"), (1.903e-06, "training.learning_rate", "1.903e-6"), (0.005, "lr", "5e-3"),
    (1.903e-06, "", "1.903e-6"), (0.0123456, "", "0.01235"), (40, "steps", "40"), (12000, "", "12,000"),
    (12.345, "train_seconds", "12.35 s"), (125.4, "eta_seconds", "2 min 5 s"), (3725, "elapsed_s", "1 h 2 min"), (None, "", "–"), (True, "", "yes"), (float("nan"), "", "nan"),
    (0.0, "", "0"), ("lora", "strategy", "lora"), ([1, 2], "", "[1, 2]"),
])  # fmt: skip
def test_human_writes_each_kind_of_value_as_people_read_it(value, key, shown):
    assert human(value, key) == shown


def test_units_helpers():
    assert significant(1.078574299812317) == "1.079" and significant(-0.5) == "-0.5"
    assert scientific(1.5e-3) == "1.5e-3" and scientific(-2.5e-7) == "-2.5e-7" and scientific(1e5) == "1e5"
    assert size(2**30) == "1 GiB" and size(1.5 * 2**20) == "1.5 MiB"


def test_ticks_cover_the_values_and_their_labels_tell_them_apart():
    ticks, step = nice_ticks(0.0009981, 0.0010203)
    assert ticks[0] <= 0.0009981 and ticks[-1] >= 0.0010203 and 3 <= len(ticks) <= 7
    labels = tick_labels(ticks, step)
    assert len(set(labels)) == len(labels) and all(len(label) <= 9 for label in labels), labels
    assert all("e-" in label for label in labels)  # one notation on an axis: not 9.9e-4 beside 0.001
    assert tick_labels([10.8, 10.825, 10.85], 0.025) == ["10.8", "10.825", "10.85"]  # not 10.83 for 10.825
    assert all(float(t).is_integer() for t in nice_ticks(1, 12, 6, whole=True)[0])  # steps: no 2.5
    ticks, step = nice_ticks(1.0785, 1.0786)
    assert len(set(tick_labels(ticks, step))) == len(ticks)
    ticks, step = nice_ticks(0, 1.903e-5)
    assert tick_labels(ticks, step, "learning_rate")[:2] == ["0", "5e-6"]
    assert nice_ticks(3.0, 3.0)[0][-1] > 3.0  # one value: still an axis


def test_a_chart_skips_non_finite_points_and_marks_a_step():
    svg = line_chart({"loss": [(1, 2.0), (2, float("nan")), (3, 1.0)]}, "loss", marks=((3, "best: step 3"),))
    assert 'data-points="2"' in svg and 'class="mark" data-x="3"' in svg and "best: step 3" in svg
    svg = line_chart({"loss": [(step, 1 / step) for step in range(1, 13)]}, "loss")
    x_labels = re.findall(r'text-anchor="middle" class="tick">([^<]*)<', svg)[:-1]  # the last: the axis's name
    assert len(x_labels) >= 3 and all(label.replace(",", "").isdigit() for label in x_labels), x_labels


# ---------------------------------------------------------------------------------------------- fixtures


def make_sweep(folder: Path) -> None:
    """A sweep dir as `peftsft sweep` leaves it (workflows.sweep_results.write_results over a real Optuna study): two
    complete trials, one pruned at step 20, one failed, one complete, and one still running."""
    import optuna
    from rich.console import Console

    from peftsft.workflows.sweep_results import SweepDir, write_results

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep_dir = SweepDir(folder)
    folder.mkdir(parents=True)
    study = optuna.create_study(study_name="peftsft-sweep", storage=sweep_dir.storage, direction="maximize")
    study.set_user_attr("metric", "exact_match")
    space = {"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
             "r": optuna.distributions.CategoricalDistribution([4, 8, 16])}  # fmt: skip
    for params, state, value in [*PARAMS, ({"learning_rate": 1e-4, "r": 4}, "running", None)]:
        study.enqueue_trial(params)
        trial = study.ask(space)
        trial.set_user_attr("seconds", 12.345)
        trial.set_user_attr("run_dir", str(sweep_dir.trials_dir / f"trial-{trial.number:03d}"))  # as sweep.py sets it
        if state == "pruned":
            trial.report(0.5, 10)
            trial.report(value, 20)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif state == "fail":
            trial.set_user_attr("failed", "non-finite loss nan at step 3")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif state == "complete":
            trial.report(value, 10)
            study.tell(trial, value)
    write_results(study, sweep_dir, "exact_match", lambda p: f"[training]\nlearning_rate = {p['learning_rate']}\n",
                  Console(quiet=True))


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, tiny_model_dir) -> Path:
    """A real run with task metrics every 2 steps (best kept by exact_match), a copy with damaged metrics rows and a
    summary of the wrong type, a sweep dir, and sweep dirs whose study and results are damaged."""
    from rich.console import Console

    from peftsft.artifacts.tasks import run
    from peftsft.training.recipe import load_recipe
    from tests.conftest import write_tiny_recipe
    from tests.unit.test_task_metrics import SETTINGS

    folder = tmp_path_factory.mktemp("ui-views")
    recipe = load_recipe(write_tiny_recipe(folder, tiny_model_dir), [*SETTINGS, 'run.name="metrics"',
                         'training.early_stopping_metric="exact_match"'])  # fmt: skip
    run(recipe, Console(quiet=True))
    root = folder / "runs"
    broken = root / "bad-rows"
    shutil.copytree(root / "metrics", broken)
    with (broken / "metrics.jsonl").open("a") as fh:
        for record in ({"step": 7, "eval_exact_match": "high"}, {"step": "x", "loss": 1}):
            fh.write(json.dumps(record) + "\n")
    summary = json.loads((broken / "summary.json").read_text())
    (broken / "summary.json").write_text(json.dumps({**summary, "best": {"step": "two", "metric": 3}}))
    make_sweep(root / "metrics-sweep")
    shutil.copytree(root / "metrics", root / "metrics-sweep" / "trials" / "trial-002")  # the best trial's run dir
    (root / "garbage-sweep").mkdir()
    (root / "garbage-sweep" / "study.db").write_bytes(b"not a database " * 64)
    (root / "broken-results-sweep").mkdir()
    (root / "broken-results-sweep" / "results.json").write_text(json.dumps({"metric": "loss", "trials": [
        {"trial": 0, "state": "complete", "value": 1.25, "params": {"r": 8}}, 7, {"trial": 2}]}))
    (root / "truncated-results-sweep").mkdir()
    (root / "truncated-results-sweep" / "results.json").write_text('{"metric": "loss", "trials": [{"trial": 0}')
    return root


def visible(tab) -> str:
    return tab.locator("main").inner_text()


# ---------------------------------------------------------------------------------------------- over HTTP


@pytest.mark.slow
def test_damaged_sweeps_and_rows_never_take_a_page_down(server, runs_root):
    url, _ = server
    status, html = get(url + "/")
    assert status == 200
    for name in ("metrics-sweep", "garbage-sweep", "broken-results-sweep", "truncated-results-sweep"):
        assert f'data-sweep="{name}"' in html
    assert "study.db: cannot be read as an Optuna study" in html and "results.json: unreadable" in html
    status, html = get(url + "/sweeps/garbage-sweep")
    assert status == 200 and "study.db: cannot be read" in html and str(runs_root) not in html.split("<main>")[1]
    assert get(url + "/sweeps/no-such-sweep")[0] == 404 and get(url + "/sweeps/metrics")[0] == 404
    assert get(url + "/sweeps/garbage-sweep/best.toml")[0] == 404
    assert get(url + "/sweeps/metrics-sweep/trials/trial-002/live")[0] == 200
    for trial in ("trial-000", "%2E%2E"):  # no run dir, and no way out of the trials folder
        assert get(url + f"/sweeps/metrics-sweep/trials/{trial}")[0] == 404, trial
    assert get(url + "/sweeps/garbage-sweep/trials/trial-002")[0] == 404
    status, html = get(url + "/sweeps/broken-results-sweep")  # results.json read, its odd rows shown as such
    assert status == 200 and html.count('data-state="unreadable"') == 2 and html.count('data-state="complete"') == 1
    status, html = get(url + "/runs/bad-rows")
    assert status == 200 and html.count("not a number, left out of the charts") == 2
    assert "summary.json: best.&#39;step&#39; should be an integer" in html and 'id="best" hidden' in html
    assert 'id="chart-metric-exact_match"' in html  # the good rows are still drawn


# ---------------------------------------------------------------------------------------------- in a browser


def assert_labels_inside_charts(tab) -> int:
    """Every text of every chart lies inside that chart's box; returns how many texts were measured."""
    measured = 0
    charts = tab.locator("svg.chart")
    for index in range(charts.count()):
        chart = charts.nth(index)
        box = chart.bounding_box()
        texts = chart.locator("text")
        for text_index in range(texts.count()):
            text = texts.nth(text_index)
            inner = text.bounding_box()
            assert inner is not None and box is not None
            label = f"{chart.get_attribute('aria-label')}: {text.text_content()!r} at {inner} outside {box}"
            for start, extent in (("x", "width"), ("y", "height")):
                assert inner[start] >= box[start] - 0.5, label
                assert inner[start] + inner[extent] <= box[start] + box[extent] + 0.5, label
            measured += 1
    return measured


@pytest.mark.slow
def test_browser_run_page_human_units_ticks_task_metrics_and_best(server, tab, runs_root):
    url, _ = server
    summary = json.loads((runs_root / "metrics" / "summary.json").read_text())
    records = [json.loads(line) for line in (runs_root / "metrics" / "metrics.jsonl").read_text().splitlines()]
    tab.goto(url + "/runs/metrics")
    text = visible(tab)
    assert not LONG_FLOAT.findall(text), LONG_FLOAT.findall(text)
    assert f"last loss\t{significant(summary['last_loss'])}" in text
    assert re.search(r"peak memory\t[\d.,]+ (GiB|MiB|KiB|B)", text)
    # a chart per task metric logged at the evaluations, each with one point per evaluation
    for name in ("exact_match", "token_f1", "rouge_l", "bleu", "general_loss"):
        steps = {r["step"] for r in records if f"eval_{name}" in r}  # the final evaluation: again at the best step
        assert len(steps) == summary["task_metrics"]["evaluations"] == 3, name
        assert tab.locator(f'#chart-metric-{name} circle.pt').count() == len(steps), name
    speeds = {r["step"]: r["tokens_per_s"] for r in records if "loss" in r}  # the training log's, not evaluations'
    assert tab.locator("#chart-speed circle.pt title").all_text_contents() == [
        f"tokens/s step {step}: {human(value, 'tokens_per_s')}" for step, value in sorted(speeds.items())]
    for series in tab.locator("#charts g.series").all():  # left to right: a curve never runs back
        xs = [float(x) for x in series.locator("circle.pt").evaluate_all("els => els.map(e => e.getAttribute('cx'))")]
        assert xs == sorted(set(xs)), series.get_attribute("data-name")
    best = summary["best"]
    assert f"best checkpoint (the adapter holds its weights): step {best['step']} — exact_match" in text
    for chart in ("loss", "metric-exact_match"):
        mark = tab.locator(f'#chart-{chart} g.mark[data-x="{best["step"]}"]')
        assert mark.text_content() == f"best: step {best['step']}"
    assert assert_labels_inside_charts(tab) > 40
    # the charts use the page's width: the loss chart spans the content, the grid holds two charts per row
    content = tab.locator("#charts").bounding_box()["width"]
    assert tab.locator("#chart-loss svg").bounding_box()["width"] >= 0.98 * content
    assert tab.locator("#chart-lr svg").bounding_box()["width"] >= 0.45 * content
    shot(tab, "metrics")


@pytest.mark.slow
def test_browser_runs_table_shows_human_units_and_the_sweeps(server, tab):
    url, _ = server
    tab.goto(url + "/")
    text = visible(tab)
    assert not LONG_FLOAT.findall(text), LONG_FLOAT.findall(text)
    memory = tab.locator('tr[data-run="metrics"] td[data-col="peak_memory_bytes"]').inner_text()
    assert re.fullmatch(r"[\d.,]+ (GiB|MiB|KiB|B)", memory), memory
    row = tab.locator('tr[data-sweep="metrics-sweep"] td')
    assert row.all_inner_texts()[1:8] == ["exact_match", "6", "3", "1", "1", "2", "0.9123"]
    assert "study.db: cannot be read" in tab.locator('tr[data-sweep="garbage-sweep"]').inner_text()


@pytest.mark.slow
def test_browser_sweep_view_trials_history_importance_and_best_recipe(server, tab):
    url, _ = server
    tab.goto(url + "/sweeps/metrics-sweep")
    rows = tab.locator("#trials tbody tr")
    assert rows.count() == 6
    states = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(6)]
    assert states == ["complete", "pruned", "complete", "complete", "fail", "running"]
    pruned = rows.nth(1).locator("td").all_inner_texts()
    assert pruned[:5] == ["1", "pruned", "0.3", "1.5e-3", "4"] and pruned[5] == "20"  # last value, step pruned at
    assert rows.nth(0).locator("td").all_inner_texts()[2:4] == ["0.8123", "2.123e-4"]
    assert "non-finite loss nan at step 3" in rows.nth(4).inner_text()
    assert tab.locator("tr.best-trial").get_attribute("data-trial") == "2"
    # the optimisation history: a point per complete trial, the best so far, the best trial marked
    history = tab.locator("#chart-history")
    assert history.locator('g[data-name="exact_match"]').get_attribute("data-points") == "3"
    assert history.locator('g[data-name="best so far"]').get_attribute("data-points") == "3"
    assert history.locator('g.mark[data-x="2"]').count() == 1
    assert tab.locator("#importance tr[data-param]").count() == 2
    assert "best: trial 2, exact_match 0.9123 · learning_rate 9.9e-5, r 16" in tab.locator("#best").inner_text()
    assert_labels_inside_charts(tab)
    assert not LONG_FLOAT.findall(visible(tab))
    shot(tab, "sweep")
    assert rows.nth(0).locator("a").count() == 0  # trial 0 left no run dir: no link
    rows.nth(2).locator("td").first.locator("a").click()  # a trial's run dir: its run page, under its sweep
    tab.wait_for_selector("#chart-loss")
    assert tab.locator("h1").inner_text() == "metrics-sweep / trial-002"
    assert tab.locator("#status").inner_text() == "done" and tab.locator('a[href$="/chat"]').count() == 0
    tab.go_back()
    tab.click("#best-recipe")
    assert "learning_rate = 9.9e-05" in tab.locator("body").inner_text()

