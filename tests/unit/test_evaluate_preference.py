"""`eval` of a preference run: rewards against the start model, the chosen preference, the win rate's judge (answer
tokens only, by the tuned policy), and the held-out pairs it reads — each checked against an independent forward."""

import json

import pytest
import torch

from peftsft.artifacts.evaluate_preference import held_out_pairs
from peftsft.artifacts.preference_scores import Scored, win_rate
from peftsft.commands.cli import main
from peftsft.core.errors import UserError
from peftsft.core.rundir import RunDir
from peftsft.data.preference import Pair
from peftsft.data.preference_encode import encode_answer
from tests.conftest import write_jsonl

PAIRS = [
    ("Who are you?", "I'm Pip, happy to help you today!", "Pip. Next."),
    ("What is LoRA?", "LoRA trains small low-rank adapters on a frozen model.", "Look it up yourself."),
    ("Thanks!", "You're welcome, happy fine-tuning!", "Whatever."),
    ("Which colour do you like?", "Teal is my favourite colour!", "Don't care."),
]
BETA = 0.5


def pair_rows():
    return [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for q, c, r in PAIRS]


def as_pairs():
    return [Pair([{"role": "user", "content": q}], {"role": "assistant", "content": c},
                 {"role": "assistant", "content": r}) for q, c, r in PAIRS]


def logprob(model, prompt_ids, answer_ids):
    """The answer's summed log-probability after the prompt, from one plain forward over both (no batching)."""
    logits = model(torch.tensor([prompt_ids + answer_ids])).logits[0].float()
    logp = logits.log_softmax(-1)
    return sum(logp[len(prompt_ids) - 1 + i, token] for i, token in enumerate(answer_ids))


def encoded(tokenizer, side):
    return [encode_answer(tokenizer, p.prompt, getattr(p, side), 64) for p in as_pairs()]


def fit(model, tokenizer, side, steps=25, lr=2e-2):
    """Train the model's trainable weights to make one side of every pair likely (SFT on it, from scratch)."""
    torch.manual_seed(0)
    answers = encoded(tokenizer, side)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = -sum(logprob(model, a.prompt_ids, a.answer_ids) / len(a.answer_ids) for a in answers)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def base_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


@pytest.fixture(scope="module", params=["fresh", "continued"])
def preference_run(request, tmp_path_factory, tiny_model_dir, tokenizer):
    """A preference run dir by hand: a LoRA adapter fitted to the chosen answers, either new on the base ("fresh") or
    continuing an SFT adapter that was fitted to the rejected ones ("continued", `[model] adapter`)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    tmp = tmp_path_factory.mktemp(f"pref-eval-{request.param}")
    data = write_jsonl(tmp / "pairs.jsonl", pair_rows())
    torch.manual_seed(0)
    model = get_peft_model(base_model(tiny_model_dir), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    adapter_line = ""
    if request.param == "continued":
        sft = tmp / "sft-adapter"
        fit(model, tokenizer, "rejected").save_pretrained(sft)
        model = PeftModel.from_pretrained(base_model(tiny_model_dir), sft, is_trainable=True)
        adapter_line = f'adapter = "{sft}"'
    fit(model, tokenizer, "chosen")
    run = RunDir(tmp / "runs" / "pref")
    model.save_pretrained(run.adapter_dir)
    tokenizer.save_pretrained(run.adapter_dir)
    run.recipe_file.write_text(f'''task = "preference"
[model]
source = "{tiny_model_dir}"
{adapter_line}
[strategy]
name = "lora"
r = 4
alpha = 8
[[data.datasets]]
path = "{data}"
[data]
eval_path = "{data}"
max_length = 64
[eval]
general_check = false
[preference]
method = "dpo"
beta = {BETA}
''', encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def report(preference_run):
    assert main(["eval", str(preference_run.path), "--max-new-tokens", "6", "--batch-size", "3"]) == 0
    return json.loads(preference_run.eval_file.read_text(encoding="utf-8"))


def tuned_and_start(run, model_dir):
    """The tuned model and the one it started from, each loaded on its own base (no adapter switching)."""
    from peft import PeftModel

    sft = run.recipe().model.adapter
    start = PeftModel.from_pretrained(base_model(model_dir), sft) if sft else base_model(model_dir)
    return PeftModel.from_pretrained(base_model(model_dir), run.adapter_dir).eval(), start.eval()


@torch.no_grad()
def test_rewards_are_betas_times_the_log_ratio_of_tuned_to_start_on_answer_tokens(report, preference_run,
                                                                                   tiny_model_dir, tokenizer):
    tuned, start = tuned_and_start(preference_run, tiny_model_dir)
    margins = []
    for chosen, rejected in zip(encoded(tokenizer, "chosen"), encoded(tokenizer, "rejected")):
        ratio = [float(logprob(tuned, a.prompt_ids, a.answer_ids) - logprob(start, a.prompt_ids, a.answer_ids))
                 for a in (chosen, rejected)]
        margins.append(BETA * (ratio[0] - ratio[1]))
    rewards = report["rewards"]
    assert rewards["pairs"] == len(PAIRS)
    assert rewards["margin"] == pytest.approx(sum(margins) / len(margins), abs=2e-3)
    assert rewards["margin"] > 0.1  # a policy fitted to the chosen answers: not the policy as its own reference
    assert rewards["accuracy"] == 1.0 == sum(m > 0 for m in margins) / len(margins)  # chosen on the chosen side


@torch.no_grad()
def test_the_tuned_model_prefers_the_chosen_answers_per_token_more_often_than_its_start(report, preference_run,
                                                                                       tiny_model_dir, tokenizer):
    """Each model's share of pairs whose chosen answer is likelier per token, against an independent fp32 forward (a
    pair closer than the tolerance may fall either way: the report scores under the run's bf16 autocast); how many
    pairs flip in the fixture's short fit differs between CPU kinds, so only the direction is pinned beyond that."""
    tuned, start = tuned_and_start(preference_run, tiny_model_dir)
    pairs = list(zip(encoded(tokenizer, "chosen"), encoded(tokenizer, "rejected")))
    for side, model in (("tuned", tuned), ("start", start)):
        margins = [float(logprob(model, c.prompt_ids, c.answer_ids)) / len(c.answer_ids)
                   - float(logprob(model, r.prompt_ids, r.answer_ids)) / len(r.answer_ids) for c, r in pairs]
        surely, maybe = (sum(m > bound for m in margins) / len(pairs) for bound in (5e-3, -5e-3))
        assert surely <= report["prefers_chosen"][side] <= maybe, (side, margins)
    assert report["prefers_chosen"]["tuned"] > report["prefers_chosen"]["start"]
    if preference_run.recipe().model.adapter:  # the SFT adapter (fitted to the rejected answers) is the start
        assert report["prefers_chosen"]["start"] <= 0.25
        assert report["start"].endswith(" + " + preference_run.recipe().model.adapter)
    assert report["task"] == "preference" and report["method"] == "dpo" and report["beta"] == BETA
    assert report["general"] is None  # [eval] general_check = false


@torch.no_grad()
def test_win_rate_judges_each_answer_by_the_tuned_policy_on_its_answer_tokens_only(report, preference_run,
                                                                                    tiny_model_dir, tokenizer):
    tuned, _ = tuned_and_start(preference_run, tiny_model_dir)
    assert len(report["answers"]) == len(PAIRS)
    for row, pair in zip(report["answers"], as_pairs()):
        assert row["prompt"] == pair.prompt
        for side in ("tuned", "start"):
            answer = encode_answer(tokenizer, pair.prompt, {"role": "assistant", "content": row[side]}, 64)
            expected = float(logprob(tuned, answer.prompt_ids, answer.answer_ids)) / len(answer.answer_ids)
            assert row[f"{side}_per_token"] == pytest.approx(expected, abs=2e-3), side
    wins = report["win_rate"]
    assert wins["prompts"] == len(PAIRS) and wins["wins"] + wins["ties"] + wins["losses"] == len(PAIRS)
    assert "length-normalised" in wins["judge"]
    for side in ("tuned", "start"):
        assert wins["lengths"][side]["words"] == pytest.approx(
            sum(len(r[side].split()) for r in report["answers"]) / len(PAIRS), abs=0.01)
        assert 1 <= wins["lengths"][side]["tokens"] <= 7  # at most --max-new-tokens 6, and the end-of-turn token


def test_win_rate_counts_a_win_a_loss_and_a_tie_by_mean_log_probability_per_token():
    tuned = [Scored(-6.0, 6), Scored(-9.0, 3), Scored(-1.0, 1), Scored(-4.0, 4), Scored(-1.0, 2)]
    start = [Scored(-2.0, 1), Scored(-4.0, 4), Scored(-5.0, 1), Scored(-1.0, 1), Scored(-3.0, 2)]
    # per token: -1 vs -2 (a win, which summed log-probabilities would call a loss), -3 vs -1 (loss), the same text
    # but for a trailing space (tie), -1 vs -1 (tie), -0.5 vs -1.5 (win)
    result = win_rate(tuned, start, ["a", "b", "same", "c", "d"], ["x", "y", "same ", "z", "w"])
    assert result == {"win_rate": 0.6, "wins": 2, "ties": 2, "losses": 1, "prompts": 5}


def test_held_out_pairs_come_from_data_else_the_eval_file_and_must_be_pairs(preference_run, tmp_path):
    recipe = preference_run.recipe()
    pairs, source = held_out_pairs(recipe, None)
    assert pairs == as_pairs() and source == recipe.data.eval_path
    unpaired = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "Hi", "completion": a, "label": ok}
                                                    for a, ok in (("Hello!", True), ("What.", False))])
    with pytest.raises(UserError, match=r"kto.jsonl:1: an unpaired row") as err:
        held_out_pairs(recipe, str(unpaired))
    assert "prompt, chosen, rejected" in err.value.hint
    broken = write_jsonl(tmp_path / "broken.jsonl", [pair_rows()[1], {"prompt": "Hi", "chosen": "Hello!"}])
    with pytest.raises(UserError, match=r"broken.jsonl:2.*'rejected'"):
        held_out_pairs(recipe, str(broken))
    no_eval = recipe.model_copy(update={"data": recipe.data.model_copy(update={"eval_path": None})})
    with pytest.raises(UserError, match="no held-out pairs") as err:
        held_out_pairs(no_eval, None)
    assert "--data" in err.value.hint


def test_eval_fraction_takes_the_pairs_training_held_out(preference_run, tokenizer):
    from peftsft.data.preference_build import build_preference_datasets
    from peftsft.data.preference_encode import encode_pair

    recipe = preference_run.recipe()
    data = recipe.data.model_copy(update={"eval_path": None, "eval_fraction": 0.5, "cache": False})
    split = recipe.model_copy(update={"data": data})
    _, evals, _ = build_preference_datasets(tokenizer, data, recipe.training.seed, paired=True)
    pairs, source = held_out_pairs(split, None)
    assert "eval_fraction 0.5" in source and len(pairs) == 2
    assert [encode_pair(tokenizer, p, data.max_length)[0].answer_ids for p in pairs] == list(evals["chosen_ids"])


def test_the_runs_card_shows_the_preference_eval_against_the_start_model(report, preference_run):
    from peftsft.artifacts.card import CardTarget, model_card

    text = model_card(preference_run.path, CardTarget("adapter", str(preference_run.adapter_dir)))
    assert (preference_run.adapter_dir / "README.md").read_text(encoding="utf-8") == text, "eval left the card as it was"
    rewards, wins = report["rewards"], report["win_rate"]
    assert f"| reward accuracy (held-out pairs) ↑ | – | {rewards['accuracy']:.4g} |" in text
    assert f"| reward margin (mean) ↑ | – | {rewards['margin']:.4g} |" in text
    assert (f"| prefers chosen (log-prob per token) ↑ | {report['prefers_chosen']['start']:.4g} | "
            f"{report['prefers_chosen']['tuned']:.4g} |") in text
    assert f"won/tied/lost) ↑ | – | {wins['win_rate']:.4g} |" in text
    assert f"{rewards['pairs']} held-out pair(s)" in text and report["start"] in text
