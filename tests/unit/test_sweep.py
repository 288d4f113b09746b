"""`peftsft sweep`: trials as runs under the sweep dir, an interrupted trial run again on resume, pruning on the
intermediate metric, the results table, plots and the best trial's recipe; the [sweep] section's checks."""

from __future__ import annotations

import json

import pytest

from peftsft.core.errors import UserError
from peftsft.training.recipe import load_recipe

optuna = pytest.importorskip("optuna", reason="the sweep needs optuna (pip install 'peftsft[sweep]')")

SPACE = """
[sweep]
metric = "loss"
startup_trials = 1
prune_startup_trials = 1
learning_rate = [1e-2, 1e-9]
"""
SETTINGS = ["data.eval_fraction=0.25", "training.eval_steps=2", "training.max_steps=4",
            "eval.general_during_training=\"off\"", "eval.task_metrics=false", "eval.general_check=false"]


def sweep(recipe, *args: str) -> int:
    from peftsft.commands.cli import main

    return main(["sweep", str(recipe), *(f"--set={s}" for s in SETTINGS), *args])


def study_of(sweep_dir):
    return optuna.load_study(study_name="peftsft-sweep", storage=f"sqlite:///{sweep_dir / 'study.db'}")


def test_interrupted_trial_reruns_pruned_trial_counts_and_best_recipe_runs(tmp_path, tiny_model_dir, capsys):
    from tests.conftest import write_tiny_recipe

    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, SPACE)
    sweep_dir = tmp_path / "runs" / "tiny-sweep"
    sweep_dir.mkdir(parents=True)
    # a sweep killed during its first trial (lr 1e-2): the study holds that trial as running
    killed = optuna.create_study(study_name="peftsft-sweep", storage=f"sqlite:///{sweep_dir / 'study.db'}")
    killed.enqueue_trial({"learning_rate": 1e-2})
    killed.ask({"learning_rate": optuna.distributions.CategoricalDistribution([1e-2, 1e-9])})

    assert sweep(recipe, "--trials", "1") == 0
    trials = study_of(sweep_dir).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == {"learning_rate": 1e-2} and trials[1].user_attrs["retry_of"] == 0
    assert (sweep_dir / "trials" / "trial-001" / "adapter").is_dir()

    # a trial far worse at its first evaluation than the median of those before: pruned there, not complete
    study_of(sweep_dir).enqueue_trial({"learning_rate": 1e-9})
    assert sweep(recipe, "--trials", "2") == 0
    results = json.loads((sweep_dir / "results.json").read_text())
    pruned = results["trials"][-1]
    assert (pruned["state"], pruned["pruned_at_step"]) == ("pruned", 2)
    assert list(pruned["intermediate"]) == ["2"] and pruned["value"] == pruned["intermediate"]["2"]  # as Optuna keeps it
    assert results["counts"] == {"complete": 1, "pruned": 1, "fail": 1}
    status = json.loads((sweep_dir / "trials" / f"trial-{pruned['trial']:03d}" / "status.json").read_text())
    assert status["state"] == "stopped" and "pruned by the sweep at step 2" in status["reason"]
    assert not (sweep_dir / "trials" / f"trial-{pruned['trial']:03d}" / "adapter").exists()
    assert results["best"]["trial"] == 1 and results["best"]["params"] == {"learning_rate": 1e-2}

    # complete and pruned trials both count toward --trials: nothing left to run
    capsys.readouterr()
    assert sweep(recipe, "--trials", "2") == 0
    assert "2 trial(s) done, 0 to run" in capsys.readouterr().out
    assert len(study_of(sweep_dir).trials) == 3

    best = load_recipe(sweep_dir / "best.toml")
    assert best.training.learning_rate == 1e-2 and best.run.name == "tiny-best" and not best.sweep.space()
    assert best.run.output_dir == str(tmp_path / "runs") and best.training.eval_steps == 2
    assert (sweep_dir / "history.png").stat().st_size > 0
    assert "not drawn" in results["plots"]["importance"]  # one complete trial: no importance yet
    table = (sweep_dir / "results.md").read_text()
    assert "| 2 | pruned |" in table and "| 1 | complete |" in table


def test_cut_short_trials_are_queued_again_once_failed_ones_are_not():
    from peftsft.workflows.sweep import finished, requeue_interrupted

    study = optuna.create_study()
    space = {"r": optuna.distributions.CategoricalDistribution([4, 8, 16])}
    for r in (4, 8, 16):
        study.enqueue_trial({"r": r})
    running, interrupted, failed = (study.ask(space) for _ in range(3))
    study.tell(interrupted, state=optuna.trial.TrialState.FAIL)  # Ctrl-C: no reason recorded
    failed.set_user_attr("failed", "non-finite loss at step 3")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    requeue_interrupted(optuna, study)
    requeue_interrupted(optuna, study)  # a second resume queues nothing more
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == [running.number, interrupted.number]
    assert [t.number for t in finished(optuna, study)] == [failed.number]


def test_a_sweep_of_another_recipe_is_not_continued(tmp_path, tiny_model_dir):
    from tests.conftest import write_tiny_recipe

    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, SPACE)
    sweep_dir = tmp_path / "runs" / "tiny-sweep"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "study.db").write_bytes(b"")
    (sweep_dir / "sweep.toml").write_text("# another recipe\n")
    with pytest.raises(UserError, match="holds a sweep of a different recipe"):
        from peftsft.core.console import console
        from peftsft.workflows.sweep import SweepRequest, sweep as run_sweep

        run_sweep(SweepRequest(str(recipe), SETTINGS), console)
    with pytest.raises(UserError, match="nothing to resume"):
        run_sweep(SweepRequest(str(recipe), [*SETTINGS, "run.name=\"other\""], resume=True), console)


def test_a_trial_whose_general_check_regressed_is_never_the_best(tiny_recipe, monkeypatch, tmp_path):
    """The objective reads the trial's metric from its summary and, asked to, makes the general check a constraint."""
    from rich.console import Console

    from peftsft.workflows import sweep as workflow
    from peftsft.workflows.sweep_results import SweepDir
    from peftsft.workflows.sweep_trial import general_excess

    regressed = {"general": {"max_general_regression": 0.1, "change": {"loss_relative": 0.3, "accuracy": -0.05}}}
    dropped = {"general": {"max_general_regression": 0.1, "change": {"loss_relative": 0.02, "accuracy": -0.2}}}
    fine = {"general": {"max_general_regression": 0.1, "change": {"loss_relative": 0.05, "accuracy": 0.0}}}
    assert general_excess(regressed) == pytest.approx(0.2) and general_excess(dropped) == pytest.approx(0.1)
    assert general_excess(fine) < 0 and general_excess({}) is None

    overrides = ["data.eval_fraction=0.25", "training.eval_steps=2"]
    path = tiny_recipe(SPACE + "general_must_not_regress = true\n")
    recipe = load_recipe(path, overrides)
    summaries = iter([{"eval": {"loss": 1.0}, **regressed}, {"eval": {"loss": 2.0}, **fine}])
    monkeypatch.setattr(workflow, "run", lambda *args, **kwargs: next(summaries))
    study = optuna.create_study(direction="minimize")
    request = workflow.SweepRequest(str(path), overrides)
    study.optimize(lambda t: workflow.run_trial(t, request, recipe, SweepDir(tmp_path), "loss", Console(quiet=True)),
                   n_trials=2)
    assert [t.value for t in study.trials] == [1.0, 2.0]
    assert study.best_trial.number == 1  # the lower loss regressed the general check
    assert study.trials[0].user_attrs["general_excess"] == pytest.approx(0.2)


def test_write_results_without_a_complete_trial(tmp_path):
    from rich.console import Console

    from peftsft.workflows.sweep_results import SweepDir, write_results

    study = optuna.create_study()
    trial = study.ask({"r": optuna.distributions.CategoricalDistribution([4, 8])})
    trial.report(3.0, 2)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    results = write_results(study, SweepDir(tmp_path), "loss", lambda params: "", Console(quiet=True))
    assert results["best"] is None and results["counts"]["pruned"] == 1 and not (tmp_path / "best.toml").exists()
    assert "No complete trial" in (tmp_path / "results.md").read_text()


# ---------------------------------------------------------------------------------------------- the [sweep] section


@pytest.mark.parametrize("extra, message", [
    ("[sweep]\nlerning_rate = [1e-3]", "[sweep] lerning_rate: unknown key — did you mean 'learning_rate'?"),
    ("[sweep]\nlearning_rate = {low = 1e-3, high = 1e-5}", "low (0.001) must be below high (1e-05)"),
    ("[sweep]\nr = {low = 2.5, high = 8}", "r takes whole numbers"),
    ("[sweep]\nlearning_rate = {low = 0.0, high = 1e-3, log = true}", "log = true needs low > 0"),
    ("[sweep]\nr = [4, 4]", "a list of distinct values"),
    ("[sweep]\nreplay = [0.1, 1.5]", "[sweep] replay = 1.5 gives a recipe that fails: [data] replay"),
    ("[sweep]\nr = [0, 4]", "[sweep] r = 0 gives a recipe that fails"),
    ("[sweep]\nmetric = \"tool_acuracy\"\nr = [4]", "did you mean 'tool_accuracy'?"),
])
def test_sweep_section_problems_name_the_key_and_the_fix(tiny_recipe, extra, message):
    with pytest.raises(UserError) as info:
        load_recipe(tiny_recipe(extra), ["data.eval_fraction=0.25", "training.eval_steps=2"])
    assert any(message in problem for problem in info.value.problems), info.value.problems


def test_a_sweep_needs_held_out_rows_and_evaluations_to_prune(tiny_recipe):
    with pytest.raises(UserError) as info:
        load_recipe(tiny_recipe("[sweep]\nr = [4, 8]"))
    assert any("[sweep] needs held-out rows" in p for p in info.value.problems)
    with pytest.raises(UserError) as info:
        load_recipe(tiny_recipe("[sweep]\nr = [4, 8]"), ["data.eval_fraction=0.25"])
    assert any("prune needs evaluations during training" in p for p in info.value.problems)
    assert load_recipe(tiny_recipe("[sweep]\nr = [4, 8]\nprune = false"), ["data.eval_fraction=0.25"]).sweep.r == [4, 8]


def test_sweep_without_a_space_or_optuna_says_what_to_do(tiny_recipe, monkeypatch):
    import builtins

    from peftsft.core.console import console
    from peftsft.workflows.sweep import SweepRequest, sweep as run_sweep

    with pytest.raises(UserError, match=r"\[sweep\] names nothing to search"):
        run_sweep(SweepRequest(str(tiny_recipe())), console)
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "optuna" else real(name, *a, **k))  # fmt: skip
    with pytest.raises(UserError, match="needs Optuna"):
        run_sweep(SweepRequest(str(tiny_recipe())), console)
