"""Tasks: what a run trains. chat.py (chat SFT through TRL's SFTTrainer), classification/ (encoder + head).

Each exposes `train(recipe, console, overwrite, resume, force) -> summary`; peftsft.artifacts.tasks records what
else a task offers (export, eval, load) and picks the record once from the recipe's `task`.
"""
