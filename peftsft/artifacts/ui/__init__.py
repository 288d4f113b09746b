"""`peftsft ui`: a local web dashboard over run dirs — runs, live curves, task metrics, sweeps, data with its masks,
chat, artifacts.

run_info.py (what a run dir says: status, metrics, summary), run_view.py (a run page's charts, summary, exports),
sweep_view.py (what a sweep dir says), charts.py (server-rendered SVG line charts), fmt.py (how every value is
written), data_view.py (the `data preview` view as HTML), app.py (the FastAPI app and its pages), templates/ (Jinja2).
"""
