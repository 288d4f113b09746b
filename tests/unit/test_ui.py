"""`peftsft ui`: pages over real run dirs, served by the real app; browser tests drive headless Chromium.

The browser tests need Debian's chromium and the playwright package (scripts/setup.sh installs both where it can);
without them they skip with the reason. The HTTP-level tests always run.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from peftsft.artifacts.tasks import run
from peftsft.training.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = REPO / "docs" / "ui"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, tiny_model_dir) -> Path:
    """Two finished tiny runs (different learning rates) and a run dir with a malformed metrics line."""
    from tests.conftest import write_tiny_recipe

    folder = tmp_path_factory.mktemp("ui")
    recipe_path = write_tiny_recipe(folder, tiny_model_dir, 'sample_prompts = ["What is your name?"]\nsample_max_new_tokens = 4')
    for name, lr in (("tiny-a", "1e-2"), ("tiny-b", "5e-3")):
        run(load_recipe(recipe_path, [f"run.name={json.dumps(name)}", f"training.learning_rate={lr}",
                                      "training.max_steps=4"]), Console(quiet=True))
    broken = folder / "runs" / "broken"
    shutil.copytree(folder / "runs" / "tiny-a", broken)
    with (broken / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 5, "loss": oops\n')
    return folder / "runs"


@pytest.fixture(scope="module")
def server(runs_root):
    """The real app under uvicorn on a free localhost port, in a thread."""
    import uvicorn

    from peftsft.artifacts.ui.app import ChatBackend, create_app

    backend = ChatBackend("cpu", max_new_tokens=8)
    port = free_port()
    config = uvicorn.Config(create_app(runs_root, backend), host="127.0.0.1", port=port, log_level="warning")
    app_server = uvicorn.Server(config)
    thread = threading.Thread(target=app_server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not app_server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", backend
    app_server.should_exit = True
    thread.join(timeout=10)


def get(url: str) -> tuple[int, str]:
    import httpx

    response = httpx.get(url, timeout=120)
    return response.status_code, response.text


def loss_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return [r for r in records if "loss" in r]


# ---------------------------------------------------------------------------------------------- over HTTP


@pytest.mark.slow
def test_runs_table_lists_every_run_with_its_status(server, runs_root):
    url, _ = server
    status, html = get(url + "/")
    assert status == 200
    for name in ("tiny-a", "tiny-b", "broken"):
        assert f'data-run="{name}"' in html
    assert "status-done" in html


@pytest.mark.slow
def test_runs_table_sorts_by_a_column(server):
    import httpx

    url, _ = server
    rows = httpx.get(url + "/api/runs").json()
    by_loss = sorted((r for r in rows if r["train_loss"] is not None), key=lambda r: r["train_loss"], reverse=True)
    html = httpx.get(url + "/?sort=train_loss&desc=true").text
    order = [html.index(f'data-run="{r["name"]}"') for r in by_loss]
    assert order == sorted(order)


@pytest.mark.slow
def test_loss_chart_has_one_point_per_logged_step(server, runs_root):
    import httpx

    url, _ = server
    live = httpx.get(url + "/runs/tiny-a/live").json()
    assert live["status"] == "done"
    assert live["points"] == len(loss_records(runs_root / "tiny-a")) == 4
    assert 'data-name="train loss" data-points="4"' in live["charts"]["loss"]


@pytest.mark.slow
def test_malformed_metrics_line_shows_an_error_panel_and_the_rest(server):
    url, _ = server
    status, html = get(url + "/runs/broken")
    assert status == 200
    assert "metrics.jsonl:" in html and "not a JSON record" in html and 'class="panel error"' in html
    assert 'data-name="train loss" data-points="4"' in html


@pytest.mark.slow
def test_missing_run_dir_is_an_error_panel_not_a_crash(server):
    url, _ = server
    status, html = get(url + "/runs/no-such-run")
    assert status == 404 and 'id="error-panel"' in html and "no-such-run" in html
    status, _ = get(url + "/runs/%2E%2E")  # the parent folder is not a run
    assert status == 404


@pytest.mark.slow
def test_compare_highlights_the_recipe_differences(server):
    url, _ = server
    status, html = get(url + "/compare?run=tiny-a&run=tiny-b")
    assert status == 200
    assert 'data-key="training.learning_rate"' in html and 'data-key="run.name"' in html
    assert 'data-key="training.seed"' not in html  # equal values are not differences
    assert html.count('class="series"') == 2


@pytest.mark.slow
def test_stopped_run_shows_why(server, runs_root):
    url, _ = server
    stopped = runs_root / "stopped"
    shutil.copytree(runs_root / "tiny-a", stopped)
    (stopped / "summary.json").unlink()
    (stopped / "status.json").write_text(json.dumps({"state": "stopped", "reason": "non-finite loss nan at step 3"}))
    status, html = get(url + "/runs/stopped")
    assert "status-stopped" in html and "non-finite loss nan at step 3" in html
    shutil.rmtree(stopped)


@pytest.mark.slow
def test_data_view_marks_exactly_the_supervised_tokens(server, runs_root, tokenizer):
    from html import unescape

    from peftsft.data.build import build_datasets
    from peftsft.core.rundir import RunDir

    url, _ = server
    status, html = get(url + "/runs/tiny-a/data?n=1")
    assert status == 200
    recipe = RunDir(runs_root / "tiny-a").recipe()
    train, _, _ = build_datasets(tokenizer, recipe.data, recipe.training.seed)
    sample = train[0]
    supervised = [t for t, label in zip(sample["input_ids"], sample["labels"]) if label != -100]
    shown = html.split('id="sample-1">', 1)[1].split("</pre>", 1)[0]
    marked = "".join(unescape(part.split("</mark>")[0]) for part in shown.split('<mark class="sup">')[1:])
    assert marked == tokenizer.decode(supervised)
    assert "Pre-flight contract: passed" in html


@pytest.mark.slow
def test_chat_answers_with_the_tuned_model_and_its_base(server, runs_root):
    import httpx

    url, backend = server
    reply = httpx.post(url + "/api/runs/tiny-a/chat", json={"prompt": "What is your name?"}, timeout=300).json()
    assert reply == backend.answers(runs_root / "tiny-a", "What is your name?")
    assert set(reply) == {"tuned", "base"}
    bad = httpx.post(url + "/api/runs/tiny-a/chat", content=b"{not json", timeout=30)
    assert bad.status_code == 400


# ---------------------------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (scripts/setup.sh installs Debian's chromium where apt works)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with playwright_api.sync_playwright() as driver:
        chromium = driver.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def tab(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    yield page
    page.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.mark.slow
def test_browser_runs_table_and_compare(server, tab):
    url, _ = server
    tab.goto(url + "/")
    assert tab.locator("tr[data-run]").count() == 3
    assert tab.locator('tr[data-run="tiny-a"] td.status-done').is_visible()
    shot(tab, "runs")
    tab.check('input[value="tiny-a"]')
    tab.check('input[value="tiny-b"]')
    tab.click("#compare")
    tab.wait_for_selector("#differences")
    assert tab.locator('tr.differs[data-key="training.learning_rate"]').count() == 1
    shot(tab, "compare")


@pytest.mark.slow
def test_browser_loss_chart_renders_every_point(server, tab, runs_root):
    url, _ = server
    tab.goto(url + "/runs/tiny-a")
    points = tab.locator('#chart-loss g[data-name="train loss"] circle.pt')
    assert points.count() == len(loss_records(runs_root / "tiny-a"))
    shot(tab, "run")


@pytest.mark.slow
def test_browser_error_panels(server, tab):
    url, _ = server
    tab.goto(url + "/runs/broken")
    assert "not a JSON record" in tab.locator("#errors").inner_text()
    tab.goto(url + "/runs/gone")
    assert tab.locator("#error-panel").is_visible()


@pytest.mark.slow
def test_browser_live_run_gains_points_within_seconds(server, tab, runs_root, tmp_path):
    """A run started now (a real `peftsft run` process) shows new loss points while it trains."""
    import os

    recipe = runs_root.parent / "recipe.toml"
    process = subprocess.Popen(
        [sys.executable, "-m", "peftsft", "run", str(recipe), "--set", 'run.name="live"',
         "--set", "training.max_steps=60"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        live_dir = runs_root / "live"
        deadline = time.time() + 180
        while time.time() < deadline and len(loss_records(live_dir) if (live_dir / "metrics.jsonl").exists() else []) < 2:
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.2)
        url, _ = server
        tab.goto(url + "/runs/live")
        assert tab.locator("#status").inner_text() == "running"
        series = tab.locator('#chart-loss g[data-name="train loss"]')
        first = int(series.get_attribute("data-points"))
        tab.wait_for_function(
            f'() => Number(document.querySelector(\'#chart-loss g[data-name="train loss"]\').dataset.points) > {first}',
            timeout=30000,
        )
        shot(tab, "live")
        assert process.wait(timeout=300) == 0
        # the page keeps polling: it turns to "done" by itself once the run ends
        tab.wait_for_function('() => document.getElementById("status").textContent === "done"', timeout=30000)
        points = tab.locator('#chart-loss g[data-name="train loss"]').get_attribute("data-points")
        assert int(points) == len(loss_records(live_dir))
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.slow
def test_browser_data_view_highlights_supervised_tokens(server, tab):
    url, _ = server
    tab.goto(url + "/runs/tiny-a/data?n=1")
    marked = tab.locator("#sample-1 mark.sup")
    assert marked.count() > 0
    assert "assistant" not in "".join(marked.all_inner_texts()).split("\n")[0]  # the header is not supervised
    shot(tab, "data")


@pytest.mark.slow
def test_browser_chat_shows_tuned_and_base_answers(server, tab, runs_root):
    url, backend = server
    expected = backend.answers(runs_root / "tiny-a", "Who are you?")
    tab.goto(url + "/runs/tiny-a/chat")
    tab.fill("#prompt", "Who are you?")
    tab.click("#send")
    tab.wait_for_function('() => document.getElementById("tuned").textContent !== "…" '
                          '&& document.getElementById("tuned").textContent !== ""', timeout=120000)
    assert tab.locator("#tuned").inner_text() == expected["tuned"]
    assert tab.locator("#base").inner_text() == expected["base"]
    shot(tab, "chat")


# ---------------------------------------------------------------------------------------------- broken run dirs


@pytest.fixture
def broken_root(tmp_path) -> Path:
    """A good run beside runs whose files are damaged: a binary recipe, a summary and recipe of the wrong types."""
    root = tmp_path / "runs"
    files = {
        "good": {"recipe.resolved.toml": '[model]\nsource = "m"\n[strategy]\nname = "lora"\n',
                 "summary.json": json.dumps({"steps": 3, "last_loss": 1.5})},
        "binary-recipe": {"recipe.resolved.toml": b"\x00\xff\xfe\x80 not toml", "summary.json": "{}"},
        "wrong-types": {"recipe.resolved.toml": 'strategy = "lora"\nmodel = 3\n',
                        "summary.json": json.dumps({"steps": "many", "last_loss": "low", "peak_memory_bytes": [1]}),
                        "status.json": json.dumps({"state": "running", "pid": "x", "reason": 7})},
    }
    for name, contents in files.items():
        (root / name).mkdir(parents=True)
        for file, content in contents.items():
            (root / name / file).write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def test_one_broken_run_is_one_row_and_never_takes_the_table_down(broken_root, monkeypatch):
    """Each bad file shows on its run's page as an error naming it; the table lists every run (#40 B4)."""
    from fastapi.testclient import TestClient

    import peftsft.artifacts.ui.run_info as run_info
    from peftsft.artifacts.ui.app import create_app

    client = TestClient(create_app(broken_root))
    table = client.get("/")
    assert table.status_code == 200
    assert all(f'data-run="{name}"' in table.text for name in ("good", "binary-recipe", "wrong-types"))
    rows = {row["name"]: row for row in client.get("/api/runs").json()}
    assert rows["good"]["steps"] == 3 and rows["good"]["train_loss"] == 1.5
    assert rows["wrong-types"]["steps"] == 0 and rows["wrong-types"]["train_loss"] is None
    page = client.get("/runs/binary-recipe")
    assert page.status_code == 200 and "recipe.resolved.toml: " in page.text and "unreadable" in page.text
    page = client.get("/runs/wrong-types")
    assert page.status_code == 200 and "summary.json: &#39;steps&#39; should be an integer, not &#34;many&#34;" in page.text
    assert "summary.json: &#39;peak_memory_bytes&#39;" in page.text

    real = run_info.read_run

    def read_run(path):  # a failure nobody foresaw, in one run dir only
        if path.name == "wrong-types":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(run_info, "read_run", read_run)
    rows = {row["name"]: row for row in client.get("/api/runs").json()}
    assert rows["wrong-types"]["status"] == "unreadable" and rows["good"]["steps"] == 3


def test_error_pages_never_show_server_paths(broken_root, monkeypatch):
    """A 300-character run name is a 404 (not "File name too long"); 404 and 500 pages name no server path."""
    from fastapi.testclient import TestClient

    import peftsft.artifacts.ui.app as ui_app

    client = TestClient(ui_app.create_app(broken_root), raise_server_exceptions=False)
    for name in ("x" * 300, "no-such-run", "%2E%2E"):
        page = client.get(f"/runs/{name}")
        assert page.status_code == 404 and 'id="error-panel"' in page.text, name
        assert str(broken_root) not in page.text and str(broken_root.parent) not in page.text
    assert client.get(f"/runs/{'x' * 300}/live").status_code == 404

    page = client.get("/runs/binary-recipe/data")  # the recipe cannot be read: a 422 naming it from runs/ on
    assert page.status_code == 422 and "runs/binary-recipe/recipe.resolved.toml: unreadable" in page.text
    assert str(broken_root) not in page.text

    def failing(run):
        raise RuntimeError(f"cannot read {broken_root}/good/metrics.jsonl")

    monkeypatch.setattr(ui_app, "live", failing)
    page = client.get("/runs/good")
    assert page.status_code == 500 and "this page failed (RuntimeError)" in page.text
    assert str(broken_root) not in page.text and str(broken_root.parent) not in page.text


# ---------------------------------------------------------------------------------------------- status.json


@pytest.mark.slow
def test_a_failing_run_records_failed_with_the_reason(tiny_recipe, monkeypatch):
    import peftsft.tasks.chat as chat_task
    from peftsft.artifacts.ui.run_info import read_run

    def broken_trainer(*args, **kwargs):
        raise RuntimeError("trainer exploded")

    monkeypatch.setattr(chat_task, "sft_trainer", broken_trainer)
    recipe = load_recipe(tiny_recipe())
    with pytest.raises(RuntimeError, match="exploded"):
        run(recipe, Console(quiet=True))
    info = read_run(recipe.run_dir)
    assert (info.status, info.reason) == ("failed", "RuntimeError: trainer exploded")


@pytest.mark.slow
def test_a_refused_run_leaves_the_existing_runs_status_alone(tiny_recipe):
    from peftsft.core.errors import UserError

    recipe = load_recipe(tiny_recipe())
    recipe.run_dir.mkdir(parents=True)
    status = {"state": "running", "reason": None, "pid": 1, "time": time.time()}
    (recipe.run_dir / "status.json").write_text(json.dumps(status))
    (recipe.run_dir / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="already exists"):
        run(recipe, Console(quiet=True))
    assert json.loads((recipe.run_dir / "status.json").read_text()) == status
