"""Workflows: a task run over a run dir, and the searches built from many runs (sweeps)."""
