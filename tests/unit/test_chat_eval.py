"""chat / generate / eval on a tiny model trained to memorise three answers; early stopping; answer metrics."""

import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from peftsft.commands.cli import main
from peftsft.training.recipe import load_recipe
from peftsft.core.errors import UserError
from peftsft.artifacts.evaluate import answer_metrics, contains_reference, exact_match, token_f1
from peftsft.artifacts.tasks import run
from tests.conftest import lora_recipe_head, write_jsonl

QA = [
    ("What is the capital of France?", "Paris."),
    ("What colour is the sky?", "Blue."),
    ("Who wrote Hamlet?", "Shakespeare."),
]
# ChatML without SmolLM2's default system prompt: a prompt rendered with it proves the training template was used
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def prompt_text(*turns: str) -> str:
    roles = ["user", "assistant"] * len(turns)
    body = "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in zip(roles, turns))
    return body + "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def memo_model_dir(tmp_path_factory, tokenizer):
    """A tiny Llama that memorises quickly: hidden 64, large init, and no pad id (which would zero <|im_end|>)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        initializer_range=0.3, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    out = tmp_path_factory.mktemp("memo-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def memo_recipe(tmp, model_dir, extra: str = "") -> str:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA]
    data = write_jsonl(tmp / "qa.jsonl", rows)
    (tmp / "chatml.jinja").write_text(TEMPLATE)
    recipe = tmp / "memo.toml"
    recipe.write_text(lora_recipe_head(model_dir, data) + f"""
[data]
eval_path = "{data}"
template = "{tmp / 'chatml.jinja'}"
max_length = 64
[training]
learning_rate = 2e-2
max_steps = 14
batch_size = 3
lr_scheduler = "constant"
warmup_ratio = 0.0
logging_steps = 7
seed = 7
[run]
name = "memo"
output_dir = "{tmp / 'runs'}"
{extra}
""")
    return recipe


@pytest.fixture(scope="module")
def memo_run(tmp_path_factory, memo_model_dir):
    """The run dir of a LoRA run that has memorised QA (checked by the eval test)."""
    tmp = tmp_path_factory.mktemp("memo-run")
    recipe = load_recipe(memo_recipe(tmp, memo_model_dir))
    run(recipe, Console(quiet=True))
    return recipe.run_dir


def chat(monkeypatch, capsys, args: list[str], stdin: str) -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main(["chat", *args]) == 0
    return capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- eval


@pytest.mark.slow
def test_eval_memorised_answers_exact_match_one_base_lower(memo_run, tokenizer, capsys):
    assert main(["eval", str(memo_run), "--max-new-tokens", "6"]) == 0
    report = json.loads((memo_run / "eval.json").read_text())
    base, tuned = report["results"]["base"], report["results"]["tuned"]
    assert report["rows"] == 3 and report["answered_rows"] == 3
    assert tuned["exact_match"] == 1.0 and tuned["contains_reference"] == 1.0 and tuned["token_f1"] == 1.0
    assert tuned["rouge_l"] == pytest.approx(1.0) and tuned["bleu"] == pytest.approx(100.0)
    assert base["exact_match"] < 1.0 and base["token_f1"] < 1.0
    assert tuned["eval_loss"] < base["eval_loss"]
    assert tuned["perplexity"] == pytest.approx(math.exp(tuned["eval_loss"]))
    answer_tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for _, a in QA)  # + <|im_end|>
    assert base["eval_tokens"] == tuned["eval_tokens"] == answer_tokens  # assistant tokens only
    assert [a["tuned"] for a in report["answers"]] == [a for _, a in QA]
    table = capsys.readouterr().out
    assert "exact_match" in table and "base" in table and "tuned" in table


def test_eval_split_is_the_one_training_held_out(tiny_recipe, tokenizer):
    from peftsft.data.build import build_datasets
    from peftsft.data.masking import encode
    from peftsft.artifacts.evaluate import held_out_conversations

    recipe = load_recipe(tiny_recipe(), ["data.eval_fraction=0.25", "data.cache=false"])
    _, eval_ds, _ = build_datasets(tokenizer, recipe.data, recipe.training.seed)
    conversations, source = held_out_conversations(recipe, None)
    encoded = [encode(tokenizer, c, "assistant", recipe.data.max_length).input_ids for c in conversations]
    assert encoded == eval_ds["input_ids"] and "eval_fraction" in source


@pytest.mark.slow
def test_eval_needs_held_out_data_for_a_plain_model(memo_model_dir):
    with pytest.raises(UserError, match="no held-out data"):
        main(["eval", str(memo_model_dir), "--debug"])


# ---------------------------------------------------------------------------------------------- chat


@pytest.mark.slow
def test_chat_from_stdin_keeps_history_uses_training_template_resets_and_quits(memo_run, monkeypatch, capsys):
    q1, q2, q3 = (q for q, _ in QA)
    out = chat(
        monkeypatch, capsys,
        [str(memo_run), "--show-prompt", "--temperature", "0", "--max-new-tokens", "6"],
        f"{q1}\n{q2}\n/reset\n{q3}\n/quit\nnever asked\n",
    )
    parts = out.split("── prompt (tuned) ──\n")[1:]
    prompts = [part.split("── end of prompt ──")[0].strip("\n") for part in parts]
    assert prompts == [
        prompt_text(q1).strip("\n"),
        prompt_text(q1, "Paris.", q2).strip("\n"),  # history kept, with the model's own reply
        prompt_text(q3).strip("\n"),  # /reset forgot the earlier turns
    ]
    assert "SmolLM" not in out  # the base tokenizer's template (with its default system prompt) was not used
    replies = [line for line in out.splitlines() if not line.startswith("<|im_start|>") and line in {a for _, a in QA}]
    assert replies[0] == "Paris." and replies[-1] == "Shakespeare."  # (the 2nd answer sees a history never trained on)
    assert "never asked" not in out


class TerminalInput(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.slow
def test_a_message_longer_than_the_context_is_refused_not_generated(memo_run, monkeypatch, capsys):
    """A pasted 100 kB line: piped, exit 2 at once; on a terminal, an error and the conversation goes on (#40 B7)."""
    pasted = "word " * 20_000
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{pasted}\n{QA[0][0]}\n"))
    assert main(["chat", str(memo_run), "--temperature", "0", "--max-new-tokens", "6"]) == 2
    captured = capsys.readouterr()
    assert "the message does not fit" in captured.err and "the model's context is 256 tokens" in captured.err
    assert "Traceback" not in captured.err and "Paris." not in captured.out

    monkeypatch.setattr(sys, "stdin", TerminalInput(f"{pasted}\n{QA[0][0]}\n"))
    assert main(["chat", str(memo_run), "--temperature", "0", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "the message does not fit" in out and "/reset the conversation" in out
    assert out.index("does not fit") < out.index("Paris.")  # the next message is answered, without the long one


@pytest.mark.slow
def test_chat_compare_base_scripted_with_jsonl(memo_run, monkeypatch, capsys):
    args = [str(memo_run), "--compare-base", "--jsonl", "--temperature", "0", "--max-new-tokens", "4"]
    out = chat(monkeypatch, capsys, args, f"{QA[0][0]}\n")
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 1 and set(records[0]) == {"user", "base", "tuned"}
    assert records[0]["tuned"] == "Paris." and records[0]["base"] != "Paris."


@pytest.mark.slow
def test_chat_on_a_merged_dir_finds_its_base(memo_run, tmp_path, monkeypatch, capsys):
    import shutil

    from peftsft.loading import load

    loaded = load(memo_run, "cpu")
    merged = tmp_path / "merged"
    loaded.model.merge_and_unload().save_pretrained(merged)
    loaded.tokenizer.save_pretrained(merged)
    shutil.copy(memo_run / "recipe.resolved.toml", merged)
    out = chat(monkeypatch, capsys, [str(merged), "--compare-base", "--temperature", "0", "--max-new-tokens", "4"],
               f"{QA[2][0]}\n")
    assert "tuned › Shakespeare." in out and "base › " in out
    assert not (load(merged, "cpu").base_source is None)


@pytest.mark.slow
def test_unusable_model_arguments_are_clear_errors(memo_model_dir, memo_run, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    with pytest.raises(UserError, match="--compare-base needs to know the base model"):
        main(["chat", str(memo_model_dir), "--compare-base", "--debug"])
    with pytest.raises(UserError, match="--base is for model dirs"):
        main(["chat", str(memo_run), "--base", str(memo_model_dir), "--debug"])
    (tmp_path / "recipe.resolved.toml").write_text((memo_run / "recipe.resolved.toml").read_text())
    with pytest.raises(UserError, match="incomplete run dir, adapter is missing"):
        main(["chat", str(tmp_path), "--debug"])


# ---------------------------------------------------------------------------------------------- generate


@pytest.mark.slow
def test_generate_answers_a_prompts_file(memo_run, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": QA[0][0], "id": 1},
        {"messages": [{"role": "user", "content": QA[1][0]}]},
        {"messages": [{"role": "user", "content": QA[2][0]}, {"role": "assistant", "content": "reference"}]},
    ])
    out = tmp_path / "out.jsonl"
    assert main(["generate", str(memo_run), "--prompts", str(prompts), "--out", str(out), "--compare-base",
                 "--max-new-tokens", "6", "--batch-size", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["response"] for r in rows] == [a for _, a in QA]
    assert rows[0]["id"] == 1 and all("base_response" in r for r in rows)
    assert rows[2]["messages"][-1]["content"] == "reference"  # input rows are kept as they were


@pytest.mark.slow
def test_generate_reports_the_bad_row(memo_run, tmp_path):
    rows = [{"prompt": "hi"}, {"messages": [{"role": "assistant", "content": "x"}]}]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    with pytest.raises(UserError, match=r"prompts.jsonl:2: the conversation must end with a user turn"):
        main(["generate", str(memo_run), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"), "--debug"])


# ---------------------------------------------------------------------------------------------- early stopping


@pytest.mark.slow
def test_early_stopping_stops_and_keeps_the_best_checkpoint(tmp_path, memo_model_dir):
    from safetensors.torch import load_file

    # a threshold no improvement can reach: every evaluation after the first counts against patience
    recipe = load_recipe(memo_recipe(tmp_path, memo_model_dir), ["training.max_steps=40", "training.eval_steps=1",
                                       "training.early_stopping_patience=2", "training.early_stopping_threshold=100.0"])
    summary = run(recipe, Console(quiet=True))
    assert summary["steps"] == 3 and summary["stopped_early"]
    best = Path(summary["best_checkpoint"])
    assert [p.name for p in (recipe.run_dir / "checkpoints").glob("checkpoint-*")] == [best.name]
    kept = load_file(best / "adapter_model.safetensors")
    final = load_file(recipe.run_dir / "adapter" / "adapter_model.safetensors")
    assert kept.keys() == final.keys() and all(torch.equal(kept[k], final[k]) for k in kept)
    assert summary["eval_loss"] == pytest.approx(summary["best_metric"])


def test_early_stopping_needs_eval_steps_and_eval_data(tiny_recipe):
    with pytest.raises(UserError) as info:
        load_recipe(tiny_recipe(), ["training.early_stopping_patience=2"])
    text = str(info.value)
    assert "early_stopping_patience needs eval_steps" in text and "early_stopping_patience needs eval data" in text


# ---------------------------------------------------------------------------------------------- metrics


def test_answer_metrics_on_known_pairs():
    assert exact_match("  Paris!", "paris") == 1.0 and exact_match("Paris, France", "Paris") == 0.0
    assert contains_reference("It is Paris, France.", "paris") == 1.0
    assert contains_reference("Parisian", "Paris") == 0.0  # whole words only
    precision, recall = 1.0, 4 / 6
    assert token_f1("the capital is Paris", "Paris is the capital of France") == pytest.approx(
        2 * precision * recall / (precision + recall)
    )
    scores = answer_metrics(["Paris.", "no idea"], ["Paris.", "Blue."])
    assert scores["exact_match"] == 0.5 and scores["rouge_l"] == pytest.approx(0.5)
    assert 0 < scores["bleu"] < 100
