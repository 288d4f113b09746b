"""Tasks: what a run trains, each filling the training skeleton (training/skeleton.py): chat.py (chat SFT through
TRL's SFTTrainer), classification/ (a model with a classification head through transformers' Trainer).

Each exposes `train(recipe, console, overwrite, resume, force) -> summary`; peftsft.workflows.run picks one by the
recipe's `task`, and peftsft.artifacts.tasks records what else a task's runs offer (export, eval, load).
"""
