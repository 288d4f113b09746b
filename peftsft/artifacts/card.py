"""Model cards (README.md) written from a finished run: Hub metadata, then what the run did and how to load it.

One card per artifact — the adapter in the run dir, an adapter / merged / GGUF export, a push folder — built from
the run's own records (recipe.resolved.toml, summary.json, eval.json, loss.png, the exports' verification records).
Rendered through `huggingface_hub.ModelCard`, so the metadata block is the Hub's own YAML.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from peftsft.artifacts.export.record import read_record
from peftsft.base_identity import is_hub_id
from peftsft.core.config import Recipe
from peftsft.core.errors import UserError
from peftsft.core.rundir import RunDir, write_text
from peftsft.models import resolve_source

LIBRARY = {"adapter": "peft", "merged": "transformers", "gguf": "gguf"}
EVAL_METRICS = ("eval_loss", "perplexity", "exact_match", "f1", "rouge_l", "bleu")


@dataclass(frozen=True)
class CardTarget:
    """What the card describes and where a reader loads it from (a Hub repo id or a local path)."""

    fmt: str  # adapter | merged | gguf
    location: str
    gguf_file: str | None = None  # gguf: the file's name inside `location`
    checks: tuple[dict, ...] = ()  # the artifact's own verification (record entries); else the run's exports'


def write_run_card(run_dir: Path) -> Path:
    """adapter/README.md of a finished run (replacing peft's template), with the training curve beside it."""
    adapter = RunDir(run_dir).adapter_dir
    return write_card(run_dir, adapter, CardTarget("adapter", str(adapter.resolve()), checks=()))


def write_card(run_dir: Path, folder: Path, target: CardTarget) -> Path:
    """README.md (+ loss.png) into `folder` for `target`."""
    plot = RunDir(run_dir).loss_plot
    if plot.is_file() and folder.resolve() != plot.parent.resolve():
        shutil.copy2(plot, folder / plot.name)
    write_text(folder / "README.md", model_card(run_dir, target))
    return folder / "README.md"


def model_card(run_dir: Path, target: CardTarget) -> str:
    from huggingface_hub import ModelCard

    run = RunDir(run_dir)
    recipe, summary = run.recipe(), run.read_summary()
    sections = [
        f"# {recipe.run.name}\n\n{_introduction(recipe, summary, target)}",
        _base_section(recipe),
        _load_section(target),
        _training_section(recipe, summary, run),
        _data_section(summary.get("data") or {}),
        _eval_section(summary, run.read_eval()),
        _verification_section(list(target.checks) or _export_checks(run), target),
        f"## Recipe (resolved)\n\n```toml\n{run.recipe_text().strip()}\n```",
        _template_section(run),
    ]
    metadata = card_metadata(recipe, target.fmt).to_yaml()
    return ModelCard(f"---\n{metadata}\n---\n\n" + "\n\n".join(sections) + "\n").content


def card_metadata(recipe: Recipe, fmt: str):
    """The Hub's metadata: base_model, library_name, pipeline_tag, tags, datasets (Hub ids only), license."""
    from huggingface_hub import ModelCardData

    kind = recipe.preference.method if recipe.task == "preference" else "sft"
    tags = ["peftsft", "trl", kind, recipe.strategy.name, "chat"] + (["gguf"] if fmt == "gguf" else [])
    datasets = [d.path for d in recipe.data.datasets if is_hub_id(d.path)]
    return ModelCardData(
        base_model=recipe.model.base_id,
        library_name=LIBRARY[fmt],
        pipeline_tag="text-generation",
        tags=list(dict.fromkeys(tags)),
        datasets=datasets or None,
        license=recipe.model.license,
    )


# ---------------------------------------------------------------------------------------------- sections


def _introduction(recipe: Recipe, summary: dict, target: CardTarget) -> str:
    what = {"adapter": f"A {recipe.strategy.name} adapter", "merged": f"The {recipe.strategy.name} adapter merged into",
            "gguf": f"A GGUF of the {recipe.strategy.name} adapter merged into"}[target.fmt]
    base = f"[{recipe.model.base_id}](https://huggingface.co/{recipe.model.base_id})" if recipe.model.base_id else \
        "its base model (public id unknown)"
    rows = (summary.get("data") or {}).get("train_rows")
    unit = "conversation(s)" if recipe.task != "preference" else "pair(s)" if recipe.preference.paired else "answer(s)"
    trained = f", trained on {rows} {unit}" if rows else ""
    license_ = f" License: `{recipe.model.license}`." if recipe.model.license else \
        " No license was set in the recipe (`[model] license`)."
    return (f"{what} {'for ' if target.fmt == 'adapter' else ''}{base}{trained} with peftsft "
            f"({_how_trained(recipe)}).{license_}")


def _how_trained(recipe: Recipe) -> str:
    if recipe.task != "preference":
        return "supervised fine-tuning through TRL's `SFTTrainer`"
    start = f", continuing the SFT adapter `{recipe.model.adapter}`" if recipe.model.adapter else ""
    return f"preference tuning with {recipe.preference.method.upper()} on TRL's trainers{start}"


def _base_section(recipe: Recipe) -> str:
    lines = ["## Base model", ""]
    if recipe.model.base_id:
        lines.append(f"`{recipe.model.base_id}` (recorded as `[model] base_id` in the resolved recipe below).")
    else:
        lines.append("Unknown: the recipe's source names no Hub id, so this card and the adapter config cannot name "
                     "the base. Set `[model] base_id = \"OWNER/NAME\"` in the recipe and train again.")
    try:
        source = resolve_source(recipe.model.source)
    except UserError:  # the run may come from another machine: the card still describes it
        source = None
    if source is not None and source.kind == "gguf":
        lines.append(f"\nTrained on the GGUF file `{Path(source.location).name}`, dequantized to float32. On the "
                     "original weights of the base the outputs differ slightly from the ones peftsft verified.")
    if recipe.quantization.bits:
        lines.append(f"\nThe base was loaded in {recipe.quantization.bits} bits (bitsandbytes) while training.")
    return "\n".join(lines)


def _load_section(target: CardTarget) -> str:
    where, question = json.dumps(target.location), json.dumps("What can you do?")
    if target.fmt == "adapter":
        imports = "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer"
        load = f"model = AutoPeftModelForCausalLM.from_pretrained({where})\n" \
               f"tokenizer = AutoTokenizer.from_pretrained({where})"
    else:
        gguf = f", gguf_file={json.dumps(target.gguf_file)}" if target.fmt == "gguf" else ""
        imports = "from transformers import AutoModelForCausalLM, AutoTokenizer"
        load = f"model = AutoModelForCausalLM.from_pretrained({where}{gguf})\n" \
               f"tokenizer = AutoTokenizer.from_pretrained({where}{gguf})"
    code = (
        f"{imports}\n\n{load}\n"
        f"messages = [{{\"role\": \"user\", \"content\": {question}}}]\n"
        "inputs = tokenizer.apply_chat_template(\n"
        "    messages, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True\n)\n"
        "output = model.generate(**inputs, max_new_tokens=64, do_sample=False)\n"
        "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))"
    )
    notes = ""
    if target.fmt == "adapter":
        notes = ("\n\nThe base is fetched by the id in `adapter_config.json`. To use a local copy instead, put it in "
                 "the Hugging Face cache (`hf download` on a machine with network, or the `models--OWNER--NAME/"
                 "snapshots/REV` layout) and set `HF_HUB_OFFLINE=1`, or load it yourself and call "
                 "`peft.PeftModel.from_pretrained(base, ADAPTER_DIR)`.")
    if target.fmt == "gguf":
        notes = "\n\nWith Ollama: `ollama create NAME -f <the .Modelfile beside the GGUF>`, then `ollama run NAME`."
    return f"## How to load\n\n```python\n{code}\n```{notes}"


def _training_section(recipe: Recipe, summary: dict, run: RunDir) -> str:
    rows = [
        ("strategy", recipe.strategy.name),
        ("trainable parameters", _count(summary.get("trainable_params"), summary.get("total_params"))),
        ("steps", summary.get("steps")),
        ("loss (first → last)", _arrow(summary.get("first_loss"), summary.get("last_loss"))),
        ("train tokens/s", summary.get("train_tokens_per_s")),
        ("device", summary.get("device")),
        ("versions", ", ".join(f"{k} {v}" for k, v in (summary.get("versions") or {}).items())),
    ]
    plot = f"\n\n![training loss]({run.loss_plot.name})" if run.loss_plot.is_file() else ""
    return "## Training\n\n" + _table(["", "value"], [(k, v) for k, v in rows if v not in (None, "")]) + plot


def _data_section(data: dict) -> str:
    if not data:
        return "## Data\n\nThe run recorded no data statistics (summary.json is missing)."
    lengths = data.get("lengths") or {}
    rows = [
        ("rows read / kept", f"{data.get('rows')} / {data.get('kept')}"),
        ("train / eval rows", f"{data.get('train_rows')} / {data.get('eval_rows')}"),
        ("tokens (supervised)", f"{data.get('tokens')} ({data.get('supervised_share', 0):.0%} supervised)"),
        ("sample length min / median / max", f"{lengths.get('min')} / {lengths.get('p50')} / {lengths.get('max')}"),
        ("truncated", data.get("truncated")),
        ("chat template", (data.get("template") or {}).get("name")),
    ]
    sources = [(Path(s.get("path", "")).name or s.get("path"), s.get("format"), s.get("rows"))
               for s in data.get("sources") or []]
    table = _table(["", "value"], [(k, v) for k, v in rows if v is not None])
    return "## Data\n\n" + table + ("\n\n" + _table(["dataset", "format", "rows"], sources) if sources else "")


def _eval_section(summary: dict, evaluation: dict) -> str:
    if evaluation.get("task") == "preference":
        return _preference_eval_section(evaluation)
    results = evaluation.get("results") or {}
    if results:
        sides = list(results)
        rows = [(m, *(_fmt(results[s].get(m)) for s in sides)) for m in EVAL_METRICS
                if any(results[s].get(m) is not None for s in sides)]
        where = f"{evaluation.get('rows')} held-out row(s) from {evaluation.get('data')}"
        return f"## Evaluation\n\n`peftsft eval` on {where}:\n\n" + _table(["metric", *sides], rows)
    if summary.get("eval_loss") is not None:
        return ("## Evaluation\n\n" + _table(["metric", "tuned"], [("eval_loss", _fmt(summary["eval_loss"]))])
                + "\n\nThe base was not evaluated (`peftsft eval RUN` compares base and tuned).")
    return "## Evaluation\n\nThe run had no held-out data; `peftsft eval RUN --data FILE.jsonl` scores base vs tuned."


def _preference_eval_section(report: dict) -> str:
    """A preference run's `eval` (artifacts/evaluate_preference.py): the tuned model against the one it started
    from, on held-out pairs and their prompts."""
    rewards, wins, chosen = report["rewards"], report["win_rate"], report["prefers_chosen"]
    rows = [("reward accuracy (held-out pairs) ↑", "–", _fmt(rewards["accuracy"])),
            ("reward margin (mean) ↑", "–", _fmt(rewards["margin"])),
            ("prefers chosen (log-prob per token) ↑", _fmt(chosen["start"]), _fmt(chosen["tuned"])),
            (f"win rate over start ({wins['wins']}/{wins['ties']}/{wins['losses']} won/tied/lost) ↑", "–",
             _fmt(wins["win_rate"])),
            ("answer length, tokens (mean)", *(_fmt(wins["lengths"][s]["tokens"]) for s in ("start", "tuned")))]
    general = report.get("general")
    if general:  # the general check's "base" is the start model here
        rows += [("general check loss ↓", _fmt(general["base"]["loss"]), _fmt(general["tuned"]["loss"])),
                 ("general check right answers ↑", f"{general['base']['right']}/{general['base']['rows']}",
                  f"{general['tuned']['right']}/{general['tuned']['rows']}")]
    return (f"## Evaluation\n\n`peftsft eval` on {rewards['pairs']} held-out pair(s) from {report.get('data')} "
            f"({wins['prompts']} prompt(s)), against the model the run started from (`{report.get('start')}`); "
            f"{report.get('method', '').upper()}, beta {report.get('beta')}. The win rate is judged by "
            f"{wins.get('judge', 'the tuned model')}.\n\n" + _table(["metric", "start", "tuned"], rows))


def _verification_section(checks: list[dict], target: CardTarget) -> str:
    head = "## Export verification\n\n"
    if not checks:
        return head + ("This is the adapter as trained (the reference exports are checked against); no verified "
                       "export of the run is recorded yet." if target.fmt == "adapter" else "Not verified.")
    rows = [(c["artifact"], c["tolerance_name"], f"{c['max_diff']:.2e} ≤ {c['max_allowed']:.2e}",
             f"{c['mean_diff']:.2e} ≤ {c['mean_allowed']:.2e}", f"{c['agreement']:.1%} ≥ {c['min_agreement']:.0%}",
             f"{c['same_replies']}/{c['prompts']}", "passed" if c["passed"] else "DIVERGED") for c in checks]
    return (head + "Each export was re-loaded from disk and compared with base + adapter on held-out prompts "
            "(|Δ logit| over prompt and greedy reply; limits relative to the largest logit):\n\n"
            + _table(["artifact", "tolerance", "max Δ", "mean Δ", "greedy", "same replies", "result"], rows))


def _template_section(run: RunDir) -> str:
    template = run.chat_template_file
    if not template.is_file():
        return "## Chat template\n\nThe tokenizer's own (no chat_template.jinja was saved)."
    return ("## Chat template\n\nThe exact template used in training (saved with the tokenizer):\n\n```jinja\n"
            + template.read_text(encoding="utf-8").strip() + "\n```")


# ---------------------------------------------------------------------------------------------- helpers


def _export_checks(run: RunDir) -> list[dict]:
    """The checks recorded by the run's exports under <run dir>/exports/."""
    return [c for path in run.exports() if (record := read_record(path)) for c in record.get("checks", [])]


def _table(header: list[str], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _arrow(first, last) -> str | None:
    return None if first is None or last is None else f"{first:.4f} → {last:.4f}"


def _count(trainable, total) -> str | None:
    return None if not trainable or not total else f"{trainable:,} of {total:,} ({trainable / total:.3%})"
