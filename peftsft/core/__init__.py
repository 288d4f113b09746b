"""Core: the recipe schema, errors, run-dir writes and the console. Imports nothing else of peftsft."""
