"""The dashboard's FastAPI app: server-rendered pages over a runs folder, a JSON feed for live updates.

Read-only over run dirs, except the chat page, which generates through the `serve` engine (one per run, loaded on
first use; the base is the adapter switched off).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates

from peftsft.artifacts.export.record import record_path
from peftsft.artifacts.ui.charts import line_chart
from peftsft.artifacts.ui.run_info import (
    RunInfo, flatten_recipe, read_run, recipe_differences, scan_runs, unreadable_run,
)
from peftsft.core.errors import UserError
from peftsft.core.rundir import RunDir

log = logging.getLogger("peftsft.ui")
MAX_NAME_BYTES = 255  # a longer folder name cannot exist (most file systems), so it is no run
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
SORTABLE = ("name", "status", "strategy", "model", "steps", "train_loss", "eval_loss", "tokens_per_s",
            "peak_memory_gib")


class ChatBackend:
    """Tuned and base answers for a run through the `serve` engine (peftsft.artifacts.serve.Engine): one engine per
    run, loaded on first use; its queue runs one generation at a time, and `base` is the adapter switched off."""

    def __init__(self, device: str = "cpu", max_new_tokens: int = 64) -> None:
        self.device, self.max_new_tokens = device, max_new_tokens
        self._engines: dict[Path, Any] = {}
        self._lock = threading.Lock()

    def engine(self, run_dir: Path):
        from peftsft.artifacts.serve import Engine

        with self._lock:
            if run_dir not in self._engines:
                self._engines[run_dir] = Engine.load([run_dir], self.device, self.max_new_tokens)
            return self._engines[run_dir]

    def answers(self, run_dir: Path, prompt: str) -> dict[str, str]:
        engine = self.engine(run_dir)
        messages = [{"role": "user", "content": prompt}]
        return {side: engine.complete(model, messages, max_tokens=self.max_new_tokens, temperature=0).text
                for side, model in (("tuned", run_dir.name), ("base", "base"))}


def create_app(runs_root: Path, chat: ChatBackend | None = None) -> FastAPI:
    app = FastAPI(title="peftsft ui", docs_url=None, redoc_url=None, openapi_url=None)
    chat = chat or ChatBackend()

    def page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, name, {"runs_root": str(runs_root), **context}, status_code=status)

    def private(text: str) -> str:
        """`text` without where the runs live on the server: a run is named from the runs folder on."""
        for root in sorted({str(runs_root.resolve()), str(runs_root.absolute())}, key=len, reverse=True):
            text = text.replace(root, runs_root.name)
        return text

    def error(request: Request, message: str, status: int = 404) -> HTMLResponse:
        """An error page; it never shows where the runs live on the server (the header's runs folder included)."""
        return TEMPLATES.TemplateResponse(request, "error.html", {"runs_root": "", "message": private(message)},
                                          status_code=status)

    def missing(request: Request, name: str) -> HTMLResponse:
        shown = name if len(name) <= 60 else name[:57] + "..."
        return error(request, f"no run named {shown!r} (the runs table lists the runs there are)")

    def find(name: str) -> RunInfo | None:
        if "/" in name or "\0" in name or name in ("", ".", "..") or len(name.encode()) > MAX_NAME_BYTES:
            return None
        path = runs_root / name
        try:
            if not path.is_dir():
                return None
            return read_run(path)
        except Exception as exc:  # unreadable (permissions, ...): its page says so, like its row in the table
            return unreadable_run(path, exc)

    @app.exception_handler(Exception)
    async def crash_panel(request: Request, exc: Exception):  # a bug: a panel without server paths, not a trace
        log.exception("page %s failed", request.url.path)
        return error(request, f"this page failed ({type(exc).__name__}); the server's log has the details", 500)

    @app.get("/", response_class=HTMLResponse)
    def runs_table(request: Request, sort: str = "name", desc: bool = False):
        runs = scan_runs(runs_root)
        key = sort if sort in SORTABLE else "name"
        rows = sorted((r.row() for r in runs), key=lambda row: _sort_key(row[key]), reverse=desc)
        return page(request, "runs.html", rows=rows, sort=key, desc=desc, columns=SORTABLE)

    @app.get("/api/runs")
    def runs_json():
        return [r.row() for r in scan_runs(runs_root)]

    @app.get("/runs/{name}", response_class=HTMLResponse)
    def run_page(request: Request, name: str):
        run = find(name)
        if run is None:
            return missing(request, name)
        return page(request, "run.html", run=run, live=live(run), artifacts=artifacts(run))

    @app.get("/runs/{name}/live")
    def run_live(name: str):
        run = find(name)
        if run is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        return live(run)

    @app.get("/compare", response_class=HTMLResponse)
    def compare(request: Request, run: list[str] = Query(default=[])):
        runs = [r for r in (find(n) for n in (run or [])) if r is not None]
        if len(runs) < 2:
            return error(request, "pick two or more runs to compare (tick them in the runs table)", 400)
        recipes = [r.recipe for r in runs]
        chart = line_chart({r.name: r.metrics.series("loss") for r in runs}, "training loss")
        return page(request, "compare.html", runs=runs, differences=recipe_differences(recipes), chart=chart,
                    flat=[flatten_recipe(r) for r in recipes])

    @app.get("/runs/{name}/data", response_class=HTMLResponse)
    def data(request: Request, name: str, n: int = 3):
        from peftsft.artifacts.ui.data_view import data_view

        run = find(name)
        if run is None:
            return missing(request, name)
        try:
            view = data_view(RunDir(run.path), max(1, min(n, 20)))
        except UserError as exc:
            return error(request, f"{exc.message} — {exc.hint}" if exc.hint else exc.message, 422)
        return page(request, "data.html", run=run, view=view)

    @app.get("/runs/{name}/chat", response_class=HTMLResponse)
    def chat_page(request: Request, name: str):
        run = find(name)
        if run is None:
            return missing(request, name)
        return page(request, "chat.html", run=run, samples=RunDir(run.path).read_samples(run.errors))

    @app.post("/api/runs/{name}/chat")
    async def chat_answer(name: str, request: Request):
        run = find(name)
        try:
            body = await request.json()
        except ValueError:
            body = None
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if run is None or not isinstance(prompt, str) or not prompt.strip():
            return JSONResponse({"error": "need a known run and a non-empty prompt"}, status_code=400)
        try:
            import anyio

            return await anyio.to_thread.run_sync(chat.answers, run.path, prompt)
        except UserError as exc:
            return JSONResponse({"error": private(exc.message)}, status_code=422)
        except Exception as exc:  # the engine's ServeError (prompt too long, …): its OpenAI-style message
            status = getattr(exc, "status", None)
            if status is None:
                raise
            return JSONResponse({"error": str(exc)}, status_code=status)

    return app


def live(run: RunInfo) -> dict:
    """What the run page refreshes every few seconds: status, progress and the charts."""
    m = run.metrics
    return {
        "status": run.status, "reason": run.reason, "step": run.step, "max_steps": run.max_steps,
        "eta_seconds": run.eta_seconds, "errors": run.errors, "row": run.row(),
        "points": len(m.series("loss")),
        "charts": {
            "loss": line_chart({"train loss": m.series("loss"), "eval loss": m.series("eval_loss")}, "loss"),
            "lr": line_chart({"learning rate": m.series("learning_rate")}, "learning rate"),
            "speed": line_chart({"tokens/s": m.series("tokens_per_s")}, "train tokens/s"),
        },
    }


def artifacts(run: RunInfo) -> list[dict]:
    """Exports (with their verification record, when written) and the adapter's model card."""
    rundir, found = RunDir(run.path), []
    if card := rundir.read_card(run.errors):
        found.append({"name": "adapter/README.md (model card)", "text": card})
    for item in rundir.exports():
        try:
            size = sum(f.stat().st_size for f in item.rglob("*") if f.is_file()) if item.is_dir() else item.stat().st_size
            record = record_path(item).read_text(encoding="utf-8", errors="replace") \
                if record_path(item).is_file() else "no verification record"
        except OSError as exc:
            size, record = 0, f"unreadable: {exc.strerror or exc}"
        found.append({"name": f"exports/{item.name} ({size / 2**20:.1f} MiB)", "text": record})
    return found


def _sort_key(value: Any) -> tuple:
    return (value is None, value if isinstance(value, (int, float)) else str(value or ""))
