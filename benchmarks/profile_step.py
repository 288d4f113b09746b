"""Profile training steps of one benchmark arm with `torch.profiler`: where a step's time goes, op by op.

    python benchmarks/full_vs_lora.py --job reference --arms lora --out /tmp/bench   # writes /tmp/bench/arms/*.spec.json
    python benchmarks/profile_step.py /tmp/bench/arms/lora.spec.json --skip 2 --steps 3 [--set training.x=y]

Prints the top operators by self CPU time (and the share of the profiled steps' wall time) and writes a Chrome
trace beside the spec (`<arm>.trace.json`). The arm is built exactly as the benchmark builds it (`_arm.py`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _arm  # noqa: E402  (sets the environment and imports peftsft from this checkout)
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


class ProfileSteps(TrainerCallback):
    """Start the profiler after `skip` steps, stop it `steps` steps later, then stop training."""

    def __init__(self, skip: int, steps: int, shapes: bool = False) -> None:
        self.skip, self.steps, self.shapes, self.profiler, self.wall = skip, steps, shapes, None, 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.skip:
            self.profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=self.shapes
            )
            self.profiler.__enter__()
            self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is not None and state.global_step == self.skip + self.steps:
            self.wall = time.perf_counter() - self.started
            self.profiler.__exit__(None, None, None)
            control.should_training_stop = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=Path, help="an arm's spec JSON written by full_vs_lora.py (arms/NAME.spec.json)")
    parser.add_argument("--skip", type=int, default=2, help="steps before profiling (warm-up)")
    parser.add_argument("--steps", type=int, default=3, help="steps profiled")
    parser.add_argument("--top", type=int, default=25, help="operators listed")
    parser.add_argument("--shapes", action="store_true", help="group operators by their input shapes too")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a recipe override for a peftsft arm (e.g. training.base_dtype=float32)")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text(encoding="utf-8"))
    spec["total_steps"] = args.skip + args.steps
    if args.set:
        spec["recipe"] = str(_with_overrides(Path(spec["recipe"]), args.set))
    _arm.import_libraries(spec)
    meter = _arm.StepMeter(spec["arm"], spec["total_steps"], args.skip, spec["device"], None)
    build = _arm.peftsft_trainer if spec["kind"] == "peftsft" else _arm.trl_trainer
    trainer, data = build(spec, meter)
    profile = ProfileSteps(args.skip, args.steps, args.shapes)
    trainer.add_callback(profile)
    trainer.args.max_steps = spec["total_steps"]
    import contextlib

    with getattr(trainer, "peftsft_levers", contextlib.nullcontext()):
        trainer.train()
    events = profile.profiler.key_averages(group_by_input_shape=args.shapes)
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    print(f"\n{spec['arm']}: {args.steps} steps profiled, {profile.wall:.2f} s wall, {total:.2f} s self CPU time "
          f"(threads: {torch.get_num_threads()}); levers: {json.dumps(data.get('levers', {}))}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40,
                       max_shapes_column_width=60))
    trace = args.spec.with_name(f"{spec['arm']}.trace.json")
    profile.profiler.export_chrome_trace(str(trace))
    print(f"trace: {trace}")
    return 0


def _with_overrides(recipe: Path, overrides: list[str]) -> Path:
    """A resolved copy of the arm's recipe with the overrides applied (the arm's own file stays as measured)."""
    from peftsft.core.config import recipe_to_toml
    from peftsft.training.recipe import load_recipe

    out = Path(tempfile.mkdtemp()) / recipe.name
    out.write_text(recipe_to_toml(load_recipe(recipe, overrides)), encoding="utf-8")
    return out


if __name__ == "__main__":
    sys.exit(main())
