"""`peftsft ui`: a local web dashboard over run dirs — runs, live curves, data with its masks, chat, artifacts.

runs.py (what a run dir says: status, metrics, summary, exports), charts.py (server-rendered SVG line charts),
data_view.py (the `data preview` view as HTML), app.py (the FastAPI app and its pages), templates/ (Jinja2).
"""
