"""The general check (forgetting) and replay: a destroyed model is caught, an unchanged one is not; replay keeps its share."""

import json

import pytest
import torch
from rich.console import Console

from peftsft.artifacts.tasks import run
from peftsft.core.config import EvalSection
from peftsft.core.errors import UserError
from peftsft.data.build import build_datasets
from peftsft.data.replay import CHECK_SET, REPLAY_POOL, replay_count
from peftsft.training import general_check
from peftsft.training.general_check import GeneralCheck
from peftsft.training.recipe import load_recipe
from tests.conftest import lora_recipe_head, write_jsonl

# A small general set the tiny model can learn in seconds (the shipped one is monkeypatched to it)
GENERAL = [
    ("What is the capital of Russia?", "Moscow", "The capital of Russia is Moscow."),
    ("What is 2 + 2?", "4", "2 + 2 = 4."),
    ("What do bees make?", "honey", "Bees make honey."),
    ("What is the opposite of 'hot'?", "cold", "The opposite of hot is cold."),
]
ONE_SENTENCE = "I am Pip and I only talk about peftsft."
TEMPLATE = (  # ChatML without a default system prompt: short rows, so the tiny model learns them quickly
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_row(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="module")
def small_check_set(tmp_path_factory):
    path = tmp_path_factory.mktemp("general") / "check.jsonl"
    rows = [{**chat_row(q, ref), "expect": [key], "category": "t"} for q, key, ref in GENERAL]
    return write_jsonl(path, rows)


@pytest.fixture(autouse=True)
def use_small_check_set(monkeypatch, small_check_set):
    monkeypatch.setattr(general_check, "CHECK_SET", small_check_set)


@pytest.fixture(scope="module")
def knowing_model_dir(tmp_path_factory, tokenizer):
    """A tiny Llama trained (full weights, plain torch) until it answers GENERAL: a base with general ability."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from peftsft.data.masking import encode
    from peftsft.training.scoring import _left_pad as _pad

    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    ids, mask, labels = _pad([encode(tokenizer, chat_row(q, ref)["messages"], "assistant", 64) for q, _, ref in GENERAL],
                             tokenizer.pad_token_id, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
    out = tmp_path_factory.mktemp("knowing-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def general_recipe(tmp_path, model_dir, rows: list[dict], training: str) -> str:
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(lora_recipe_head(model_dir, data) + f"""
[data]
max_length = 64
[training]
batch_size = 4
lr_scheduler = "constant"
warmup_ratio = 0.0
logging_steps = 5
seed = 7
{training}
[run]
name = "general"
output_dir = "{tmp_path / 'runs'}"
""")
    return str(recipe)


# ---------------------------------------------------------------------------------------------- the check


@pytest.mark.slow
def test_a_model_trained_to_say_one_sentence_is_caught(tmp_path, knowing_model_dir):
    questions = ["Who are you?", "What can you do?", "Tell me a story.", "What is the weather like?",
                 "How do I cook rice?", "Name a colour.", "What time is it?", "Say something."]
    recipe = load_recipe(general_recipe(tmp_path, knowing_model_dir, [chat_row(q, ONE_SENTENCE) for q in questions],
                                        "learning_rate = 5e-2\nmax_steps = 12"))
    console = Console(record=True, width=200)
    summary = run(recipe, console)
    general = summary["general"]
    assert general["base"]["right"] == len(GENERAL)  # the base knew every answer
    assert general["tuned"]["loss"] > 1.5 * general["base"]["loss"] and general["tuned"]["right"] < len(GENERAL)
    assert general["regressed"] is True and general["seconds"] > 0
    out = console.export_text()
    assert "lost general ability" in out and "replay" in out and "learning rate 0.05" in out
    samples = (recipe.run_dir / "samples.md").read_text()
    assert "# General check" in samples and "forgetting" in samples and "What do bees make?" in samples
    assert json.loads((recipe.run_dir / "summary.json").read_text())["general"]["regressed"] is True


@pytest.mark.slow
def test_nothing_changed_does_not_fire(tmp_path, knowing_model_dir):
    recipe = load_recipe(general_recipe(tmp_path, knowing_model_dir, [chat_row(q, ref) for q, _, ref in GENERAL],
                                        "learning_rate = 1e-8\nmax_steps = 1"))
    console = Console(record=True, width=200)
    general = run(recipe, console)["general"]
    assert general["regressed"] is False and abs(general["change"]["loss_relative"]) < 1e-3
    assert general["change"]["accuracy"] == 0 and "lost general ability" not in console.export_text()


@pytest.mark.slow
def test_same_scores_compare_as_unchanged_and_limit_is_the_recipes(knowing_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = (cls.from_pretrained(knowing_model_dir) for cls in (AutoModelForCausalLM, AutoTokenizer))
    check = GeneralCheck(EvalSection(max_general_regression=0.05))
    score = check.score(model, tokenizer)
    result = check.compare(score, score)
    assert not result["regressed"] and result["change"]["loss"] == 0 and result["max_general_regression"] == 0.05
    worse = {**score, "loss": score["loss"] * 1.06}
    assert check.compare(score, worse)["regressed"]  # +6% loss is past a 5% limit
    fewer = {**score, "accuracy": score["accuracy"] - 0.25}
    assert check.compare(score, fewer)["regressed"]  # one of four answers lost


def test_general_path_rows_join_the_shipped_set(tmp_path):
    extra = write_jsonl(tmp_path / "mine.jsonl", [chat_row("What is my dog called?", "Rex")])
    check = GeneralCheck(EvalSection(general_path=str(extra)))
    assert len(check.rows) == len(GENERAL) + 1 and check.rows[-1].expect == ("Rex",)
    ends_in_a_question = chat_row("Hi?", "Hello.")["messages"] + [{"role": "user", "content": "And then?"}]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": ends_in_a_question}])
    with pytest.raises(UserError, match="does not end in an assistant reply"):
        GeneralCheck(EvalSection(general_path=str(bad)))


def test_general_check_off_skips_it(tmp_path, tiny_recipe):
    recipe = load_recipe(tiny_recipe(), ["eval.general_check=false"])
    assert GeneralCheck.for_recipe(recipe) is None


def test_shipped_check_set_and_replay_pool_are_disjoint_and_checkable():
    check = [json.loads(line) for line in CHECK_SET.read_text().splitlines()]
    pool = [json.loads(line) for line in REPLAY_POOL.read_text().splitlines()]
    assert 24 <= len(check) <= 48 and len(pool) >= 200
    assert all(row["expect"] and row["messages"][-1]["role"] == "assistant" for row in check)
    asked = {row["messages"][0]["content"].lower() for row in check}
    assert not asked & {row["messages"][0]["content"].lower() for row in pool}


# ---------------------------------------------------------------------------------------------- replay


@pytest.mark.parametrize("share", [0.2, 0.5])
def test_replay_mixes_in_exactly_the_share(tiny_recipe, tokenizer, share):
    plain = load_recipe(tiny_recipe(), ["data.cache=false"])
    task_ids, _, _ = build_datasets(tokenizer, plain.data, 7)
    mixed = load_recipe(tiny_recipe(), ["data.cache=false", f"data.replay={share}"])
    train, _, stats = build_datasets(tokenizer, mixed.data, 7)
    task = {tuple(ids) for ids in task_ids["input_ids"]}
    positions = [i for i, ids in enumerate(train["input_ids"]) if tuple(ids) not in task]
    replayed = len(positions)
    assert replayed == replay_count(24, share) == stats.replay["replay_rows"]  # 6 of 30, 24 of 48
    assert replayed / len(train) == pytest.approx(share) == stats.replay["actual_share"]
    assert stats.train_rows == len(train) == 24 + replayed and stats.replay["pool"] == str(REPLAY_POOL)
    assert positions[0] < len(train) // replayed and positions[-1] >= len(train) - len(train) // replayed  # spread


def test_replay_shares_that_do_not_divide_the_rows_round_to_the_nearest_row(tiny_recipe, tokenizer):
    assert replay_count(24, 0.35) == 13  # 12.92: flooring would give 12
    assert replay_count(10, 1 / 3) == 5 and replay_count(7, 0.5) == 7  # exact shares stay exact in floats
    assert replay_count(3, 0.1) == 0 and replay_count(24, 0.0) == 0
    recipe = load_recipe(tiny_recipe(), ["data.cache=false", "data.replay=0.35"])
    train, _, stats = build_datasets(tokenizer, recipe.data, 7)
    assert stats.replay["task_rows"] == 24 and stats.replay["replay_rows"] == 13 and len(train) == 37
    assert stats.replay["actual_share"] == round(13 / 37, 4)


def test_replay_draws_are_seeded_whole_passes_first_and_spread_evenly():
    from peftsft.data.replay import draw_replay, interleave

    pool = list(range(10))
    assert draw_replay(pool, 4, 7) == draw_replay(pool, 4, 7) != draw_replay(pool, 4, 8)
    assert len(draw_replay(pool, 1, 7)) == 1 and draw_replay(pool, 0, 7) == [] and draw_replay([], 5, 7) == []
    twice = draw_replay(pool, 23, 7)  # two whole passes, then 3 rows
    assert sorted(twice[:10]) == sorted(twice[10:20]) == pool and len(set(twice[20:])) == 3
    assert interleave(["t0", "t1", "t2", "t3"], ["r0", "r1"]) == ["t0", "r0", "t1", "t2", "r1", "t3"]
    assert interleave(["t0", "t1"], ["r0", "r1"]) == ["t0", "r0", "t1", "r1"]  # a tie: the task row first


def test_replay_path_is_drawn_from_and_repeated_when_small(tiny_recipe, tokenizer, tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", [chat_row("What is 1 + 1?", "2."), chat_row("Say hi.", "Hi!")])
    recipe = load_recipe(tiny_recipe(), ["data.cache=false", "data.replay=0.25", f"data.replay_path='{pool}'"])
    train, _, stats = build_datasets(tokenizer, recipe.data, 7)
    assert stats.replay["replay_rows"] == 8 and stats.replay["pool_rows"] == 2 and len(train) == 32


def test_replay_and_eval_keys_validate(tiny_recipe, tmp_path):
    def problems(*overrides: str) -> str:
        with pytest.raises(UserError) as exc:
            load_recipe(tiny_recipe(), list(overrides))
        return " ".join(exc.value.problems)

    assert "replay" in problems("data.replay=1.0")
    assert "replay_path is set but replay = 0" in problems(f"data.replay_path='{tmp_path / 'recipe.toml'}'")
    assert "max_general_regression" in problems("eval.max_general_regression=0")
    assert "general_max_new_tokens" in problems("eval.general_max_new_tokens=0")
    assert "did you mean 'general_path'" in problems("eval.genral_path='x.jsonl'")
    assert "[eval] general_path: file not found" in problems("eval.general_path='nowhere.jsonl'")
    assert "[data] replay_path: file not found" in problems("data.replay=0.2", "data.replay_path='nowhere.jsonl'")
    recipe = load_recipe(tiny_recipe(), ["data.replay=0.2", "eval.max_general_regression=0.2"])
    assert recipe.eval.general_check and recipe.data.replay == 0.2 and recipe.eval.max_general_regression == 0.2


def test_a_changed_replay_pool_rebuilds_the_cached_dataset(tiny_recipe, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTSFT_CACHE", str(tmp_path / "cache"))
    pool = write_jsonl(tmp_path / "pool.jsonl", [chat_row("What is 1 + 1?", "2.")])
    recipe = load_recipe(tiny_recipe(), ["data.replay=0.2", f"data.replay_path='{pool}'"])
    assert [build_datasets(tokenizer, recipe.data, 7)[2].cache for _ in range(2)] == ["miss", "hit"]
    write_jsonl(pool, [chat_row("What is 1 + 2?", "3.")])
    assert build_datasets(tokenizer, recipe.data, 7)[2].cache == "miss"
