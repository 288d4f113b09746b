"""The command line: argument parsing and printing only; `python -m peftsft` → cli.main."""
