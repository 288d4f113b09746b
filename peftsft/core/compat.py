"""The compatibility module: version gates, and every touch of library internals that no speed lever owns.

A lever (peftsft/levers/) gates its own patch with `require`; what is left — the attention backend transformers
chose, accelerate's process state, transformers' packed-sequence reader and RoPE tables, TRL's padding-free
collator, bitsandbytes' CPU weight layouts — lives here. Each names the versions it was
written for and fails loudly outside them, never silently doing something else.
"""

from __future__ import annotations

import importlib.metadata
import os

from peftsft.core.errors import UserError

# The releases the training path was written and tested against: another major fails loudly.
SUPPORTED = {"trl": ((1, 16), (1, 99)), "transformers": ((5, 0), (5, 99))}


def version(package: str) -> tuple[int, int]:
    """(major, minor) of an installed package."""
    major, minor, *_ = (importlib.metadata.version(package).split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def within(package: str, low: tuple[int, int], high: tuple[int, int]) -> bool:
    return low <= version(package) <= high


def require(package: str, low: tuple[int, int], high: tuple[int, int], what: str) -> None:
    """A UserError naming `what` needs `package` in [low, high] when the installed one is outside."""
    if not within(package, low, high):
        found = importlib.metadata.version(package)
        raise UserError(
            f"{package} {found} is not supported by this peftsft ({what} was written for "
            f"{low[0]}.{low[1]} to {high[0]}.x)",
            hint=f"pip install '{package}>={low[0]}.{low[1]},<{high[0] + 1}'",
        )


def check_versions() -> dict[str, str]:
    """The installed TRL/transformers versions; a UserError naming the supported range when outside it."""
    for package, (low, high) in SUPPORTED.items():
        require(package, low, high, "training")
    return {package: importlib.metadata.version(package) for package in SUPPORTED}


def attention_implementation(model) -> str:
    """The attention backend transformers chose for `model` (a private config attribute in transformers 5)."""
    require("transformers", (5, 0), (5, 99), "reading the attention backend")
    return getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"


def launched_world_size() -> int:
    """Processes training together: accelerate's count once its state exists, else the launcher's environment.

    Why private: `PartialState()` would initialise the process group when asked before the run sets it up."""
    from accelerate import PartialState

    from peftsft.core.launch import current_launch

    require("accelerate", (1, 0), (1, 99), "reading the process count")
    if PartialState._shared_state != {}:
        return PartialState().num_processes
    return current_launch().processes


def packed_sequence_starts(position_ids):
    """transformers' own reading of where packed samples start (the rule its masks follow), for the contract."""
    require("transformers", (5, 0), (5, 99), "reading packed samples")
    from transformers.masking_utils import find_packed_sequence_indices

    return find_packed_sequence_indices(position_ids)


def launched_rank() -> int:
    """This process's rank: accelerate's once its state exists, else the launcher's RANK (0 when launched alone)."""
    from accelerate import PartialState

    require("accelerate", (1, 0), (1, 99), "reading the process rank")
    if PartialState._shared_state != {}:
        return PartialState().process_index
    return int(os.environ.get("RANK", "0") or 0)


def padding_free_collator():
    """TRL's own collator for padding-free batches (the samples flattened, position ids restarting), which the
    SFT trainer uses: the contract previews a batch exactly as training will see it."""
    require("trl", (1, 16), (1, 99), "previewing padding-free batches")
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)


def rope_inverse_frequencies(rope_type: str, config):
    """transformers' own RoPE initialisation for `rope_type` (e.g. llama3's scaled frequencies), on the CPU."""
    require("transformers", (5, 0), (5, 99), "reading RoPE frequencies")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    return ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")[0]


BITSANDBYTES = ((0, 48), (0, 99))  # the packed CPU layout and its inverse, as bitsandbytes.functional names them


def bnb_pack_for_cpu(data, state):
    """bitsandbytes' conversion of a 4-bit weight to its packed AVX-512-BF16 CPU layout."""
    require("bitsandbytes", *BITSANDBYTES, "choosing bitsandbytes' CPU layout")
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    return _convert_weight_packed_for_cpu(data, state)


def bnb_unpack_for_cpu(data, state):
    """bitsandbytes' inverse of `bnb_pack_for_cpu` (back to the reference layout)."""
    require("bitsandbytes", *BITSANDBYTES, "choosing bitsandbytes' CPU layout")
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    return _convert_weight_packed_for_cpu_inverse(data, state)


ACCELERATE_FSDP_ON_CPU = ((1, 16), (1, 99))


def fsdp_on_cpu_processes() -> None:
    """accelerate's AcceleratorState turns an FSDP launch into FSDP only for GPU-like processes: on CPU ones (its
    MULTI_CPU type) it keeps plain DDP and says nothing. Told the processes are several-device ones before the trainer
    builds its accelerator, it builds FSDP; the process group (gloo), the device (cpu) and the rest stay as set up."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    require("accelerate", *ACCELERATE_FSDP_ON_CPU, "FSDP on CPU processes")
    state = PartialState()
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.MULTI_GPU  # read once, by AcceleratorState, which replaces it by FSDP


def deepspeed_zero3_enabled() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    require("transformers", (5, 0), (5, 99), "reading DeepSpeed's ZeRO stage")
    return is_deepspeed_zero3_enabled()


def tracker_names() -> list[str]:
    """The experiment trackers transformers can report to (`report_to`): its integrations' registry."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    return list(INTEGRATION_TO_CALLBACK)


TRL_PREPARE_DATASET = ((1, 16), (1, 16))  # DPOTrainer/KTOTrainer._prepare_dataset, as read in TRL 1.16


def pretokenized(trainer_class):
    """TRL's DPOTrainer or KTOTrainer taking peftsft's token rows (prompt_ids + chosen_ids/rejected_ids, or
    completion_ids + label) as they are: TRL 1.16 always re-tokenizes from text in the private `_prepare_dataset`,
    which would score the template's text after the end-of-turn token and lose the pre-flight contract's ids."""
    require("trl", *TRL_PREPARE_DATASET, "passing pre-tokenized preference rows to TRL's trainers")

    class Pretokenized(trainer_class):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" not in dataset.column_names:
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if getattr(self, "calculate_KL", False):  # KTO's mismatched pairs, by TRL 1.16's rule: completions
                # rotated by one within each batch of per_device_train_batch_size rows
                def rotate(rows):
                    return {"KL_completion_ids": [rows["completion_ids"][-1]] + rows["completion_ids"][:-1]}

                dataset = dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)
            return dataset

    Pretokenized.__name__ = Pretokenized.__qualname__ = f"Pretokenized{trainer_class.__name__}"
    return Pretokenized
