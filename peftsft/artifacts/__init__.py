"""Artifacts: what a finished run produces and serves — exports (verified), eval, and the task records."""
