"""One benchmark arm in a fresh process: load, train a few steps, measure, write a JSON result.

Run by full_vs_lora.py as `python benchmarks/_arm.py SPEC.json RESULT.json`. A peftsft arm trains through
peftsft's own path (recipe → load_model → strategy → build_datasets → make_trainer); a `trl` arm is plain
`trl.SFTTrainer` with its defaults on the same rows. Both get the same StepMeter.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import contextlib
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # peftsft from this checkout

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


# ---------------------------------------------------------------------------------------------- memory probes


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def matmul_flops_per_token(model: torch.nn.Module) -> int:
    """Training FLOPs of the model's matmuls per token: forward 2P, backward 2P for the activations' gradients and
    2P more for the weights that train. Attention scores and elementwise work are not counted."""
    total = trained = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):  # bitsandbytes' 4/8-bit layers and the LM head included
            weights = module.in_features * module.out_features
            total += weights
            trained += weights if module.weight.requires_grad else 0
    return 4 * total + 2 * trained


def current_rss() -> int:
    return _status_kib("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Restart the kernel's high-water mark (VmHWM) so that it covers training only (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    return _status_kib("VmHWM") * 1024


@torch.no_grad()
def touch(model: torch.nn.Module) -> None:
    """Read one value per page of every weight: weights loaded zero-copy from safetensors are file mappings that
    count in RSS only once read, and would otherwise show up as memory that training allocated."""
    for tensor in [*model.parameters(), *model.buffers()]:
        flat = tensor.detach().reshape(-1)
        flat[:: max(1, 4096 // flat.element_size())].sum()


def tensor_bytes(tensors) -> int:
    unique = {t.untyped_storage().data_ptr(): t for t in tensors if t.device.type != "meta"}
    return sum(t.untyped_storage().nbytes() for t in unique.values())


def weight_bytes(model: torch.nn.Module) -> int:
    """Parameters and buffers as stored, plus bitsandbytes' quantization scales that live beside them."""
    from peftsft.models import quantized_footprint

    params = list(model.parameters())
    total = tensor_bytes([*params, *model.buffers()])
    footprint = quantized_footprint(model)
    if footprint:  # quantized_bytes = packed weights + their quant_state (absmax, code, nested scales)
        packed = [p for p in params if type(p).__name__ in ("Params4bit", "Int8Params")]
        total += footprint["quantized_bytes"] - tensor_bytes(packed)
    return total


# ---------------------------------------------------------------------------------------------- the meter


class StepMeter(TrainerCallback):
    """Wall time and non-padding tokens of every optimizer step, peak memory during training, gradient bytes."""

    def __init__(self, name: str, total_steps: int, warmup: int, device: str, budget: float | None) -> None:
        self.name, self.total, self.warmup, self.device, self.budget = name, total_steps, warmup, device, budget
        self.steps: list[dict] = []
        self.grad_bytes = 0
        self.hwm_reset = False

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        touch(model)
        self.rss_before_train = current_rss()
        self.hwm_reset = reset_peak_rss()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.train_start = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._tokens0 = state.num_input_tokens_seen
        self._t0 = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.grad_bytes = max(self.grad_bytes, tensor_bytes(grads))

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        seconds = time.perf_counter() - self._t0
        tokens = state.num_input_tokens_seen - self._tokens0
        self.steps.append({"step": state.global_step, "seconds": seconds, "tokens": tokens})
        tag = " (warm-up, discarded)" if state.global_step <= self.warmup else ""
        print(
            f"    {self.name}: step {state.global_step}/{self.total}  {seconds:6.2f} s  {tokens:5d} tokens  "
            f"{tokens / max(seconds, 1e-9):7.1f} tok/s{tag}",
            flush=True,
        )
        over_budget = self.budget is not None and time.perf_counter() - self.train_start > self.budget
        if over_budget and state.global_step > self.warmup and state.global_step < self.total:
            print(f"    {self.name}: past the {self.budget:.0f} s budget, stopping after this step", flush=True)
            control.should_training_stop = True


# ---------------------------------------------------------------------------------------------- the arms


def peftsft_trainer(spec: dict, meter: StepMeter):
    """The path `peftsft run` takes, minus sampling before/after and saving."""
    from transformers import set_seed

    from peftsft.core.machine import memory_available
    from peftsft.training.recipe import load_recipe
    from peftsft.data import build_datasets
    from peftsft.data.build import apply_template
    from peftsft.levers import applied, decide_levers
    from peftsft.models import load_model
    from peftsft.strategies import StrategyContext, get_strategy
    from peftsft.strategies.registry import validate_params
    from peftsft.tasks.chat import sft_trainer
    from peftsft.levers import build_trainer as with_levers

    recipe = load_recipe(spec["recipe"])
    set_seed(recipe.training.seed)
    available = memory_available(spec["device"])  # before the weights load, as `peftsft run` measures it
    model, tokenizer, _ = load_model(recipe.model, recipe.quantization, spec["device"])
    apply_template(tokenizer, recipe.data)
    train_ds, _, stats = build_datasets(tokenizer, recipe.data, recipe.training.seed)
    strategy = get_strategy(recipe.strategy.name)
    params = validate_params(strategy, recipe.strategy.params)
    model = strategy.apply(model, params, StrategyContext(quantized=recipe.quantization.bits is not None))
    # the recipe's own levers, as `peftsft run` uses them (length-grouped batches of the job's rows included)
    levers = decide_levers(recipe, spec["device"], model, stats.max_tokens, available)
    trainer = with_levers(levers, model, lambda: sft_trainer(recipe, model, tokenizer, train_ds, None, spec["device"],
                                                              [meter], levers))  # fmt: skip
    trainer.peftsft_levers = applied(levers, model)  # as `peftsft run` applies them, while training
    supervised = sum(sum(1 for label in row if label != -100) for row in train_ds["labels"])
    data = {"rows": stats.train_rows, "dataset_tokens": stats.tokens, "supervised_tokens": supervised}
    return trainer, {**data, "levers": levers.as_dict(), "precision": levers.precision}


def trl_trainer(spec: dict, meter: StepMeter):
    """Plain TRL: SFTTrainer loads the model and tokenizes the `messages` rows itself, with SFTConfig defaults."""
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import ModelConfig, SFTConfig, SFTTrainer, get_quantization_config

    dataset = load_dataset("json", data_files=spec["data"], split="train")
    args = SFTConfig(
        output_dir=spec["run_dir"],
        max_steps=spec["total_steps"],
        per_device_train_batch_size=spec["batch"],
        max_length=spec["seq_len"],
        report_to="none",
        seed=spec["seed"],
        # measurement only, not training behaviour: the same batches as every arm, a loss and a token count
        # per step, no progress bar, no checkpoint
        train_sampling_strategy="sequential",
        logging_steps=1,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        save_strategy="no",
        use_cpu=spec["device"] == "cpu",  # TRL's bf16 default refuses to start on a CPU without it
        **({"learning_rate": spec["learning_rate"]} if spec.get("learning_rate") else {}),
    )
    lora = spec.get("lora") or {}
    lora_config = LoraConfig(
        r=lora.get("r", 16), target_modules="all-linear", task_type="CAUSAL_LM",
        **({"lora_alpha": lora["alpha"], "lora_dropout": lora["dropout"]} if lora else {}),
    )
    quantization = get_quantization_config(ModelConfig(load_in_4bit=True)) if spec["quantized"] else None
    trainer = SFTTrainer(
        model=spec["model_dir"],
        args=args,
        train_dataset=dataset,
        peft_config=lora_config,
        quantization_config=quantization,
        callbacks=[meter],
    )
    trainer.remove_callback(PrinterCallback)  # display only: the meter prints one line per step instead
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    # TRL's default for conversational rows without generation markers: the loss covers every token
    data = {"rows": len(trainer.train_dataset), "dataset_tokens": tokens, "supervised_tokens": tokens}
    return trainer, {**data, "precision": "bf16" if args.bf16 else ("fp16" if args.fp16 else "fp32")}


# ---------------------------------------------------------------------------------------------- main


def import_libraries(spec: dict) -> None:
    """Import what the arm will use before the first RSS reading, so that the reading covers library code; a
    peftsft arm bounds oneDNN's kernel caches first, as `peftsft run` does (TRL's arms keep the defaults)."""
    if spec["kind"] == "peftsft":
        from peftsft.levers import prepare_process

        prepare_process()
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import trl  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    import peftsft.tasks.chat  # noqa: F401

    if spec["quantized"]:
        import bitsandbytes  # noqa: F401
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    config = AutoConfig.from_pretrained(spec["model_dir"])
    with torch.device("meta"):  # imports the architecture's modeling code, allocates nothing
        AutoModelForCausalLM.from_config(config)


def run(spec: dict) -> dict:
    import_libraries(spec)
    rss_start = current_rss()
    meter = StepMeter(spec["arm"], spec["total_steps"], spec["warmup"], spec["device"], spec.get("budget"))
    started = time.perf_counter()
    trainer, data = (peftsft_trainer if spec["kind"] == "peftsft" else trl_trainer)(spec, meter)
    load_seconds = time.perf_counter() - started
    model = trainer.model
    with getattr(trainer, "peftsft_levers", contextlib.nullcontext()):
        result = trainer.train()
    return {
        **measurements(spec, trainer, meter, rss_start, model),
        "data": data,
        "precision": data.pop("precision"),
        "total_steps": spec["total_steps"],
        "load_seconds": round(load_seconds, 2),
        "train_loss": result.training_loss,
    }


def measurements(spec: dict, trainer, meter: StepMeter, rss_start: int, model) -> dict:
    from peftsft.strategies import trainable_summary

    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    states = [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    out = {
        **trainable_summary(model),
        "steps": meter.steps,
        "losses": losses,
        "weights_bytes": weight_bytes(model),
        "matmul_flops_per_token": matmul_flops_per_token(model),
        "gradient_bytes": meter.grad_bytes,
        "optimizer_state_bytes": tensor_bytes(states),
        "rss_start_bytes": rss_start,
        "rss_before_train_bytes": meter.rss_before_train,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
    }
    if meter.hwm_reset:
        out["train_peak_rss_bytes"] = peak_rss()
        out["train_rss_increase_bytes"] = max(0, out["train_peak_rss_bytes"] - meter.rss_before_train)
    if spec["device"] == "cuda":
        out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        out["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
    return out


def main(argv: list[str]) -> int:
    spec_path, result_path = map(Path, argv)
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    warnings.filterwarnings("ignore")
    try:
        result = {"ok": True, **run(spec)}
        code = 0
    except Exception as exc:  # the parent reports the failure and goes on with the other arms
        from peftsft.core.errors import UserError

        detail = str(exc) if isinstance(exc, UserError) else traceback.format_exc()
        print(detail, file=sys.stderr)
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        result, code = {"ok": False, "error": f"{type(exc).__name__}: {first_line}"}, 1
    result_path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
