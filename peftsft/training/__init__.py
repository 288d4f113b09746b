"""The training kit: trainer arguments, callbacks, the speed levers + memory plan (one decision per run), the
TRL compatibility layer, run-dir life cycle (open, guarded train, summary), resume and multi-process helpers."""
