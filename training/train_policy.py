"""``ponder train policy --task arith``: a small Llama-config decoder trained from scratch on the
built-in arithmetic task's training split, saved as an fp16 HF checkpoint with ``ponder.json``.

The recipe is seeded (model init, question stream, batch order) and runs a fixed number of
optimizer steps, so the same command gives the same model on the same machine; the wall time
varies with the machine's load (docs/quality.md records the measured times).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ponder.proto.errors import InvalidArgument
from ponder.workers.models import PromptFormat, format_prompt
from ponder.tasks import arith
from ponder.training import manifest
from ponder.training.checkpoint import ModelShape, byte_tokenizer, new_model, save_checkpoint
from ponder.training.sft import Example, LoopConfig, bucketed, encode_example, train_loop

log = logging.getLogger(__name__)
DEFAULT_OUT = Path("artifacts/arith/policy")


@dataclass(frozen=True)
class PolicyRecipe:
    task: str = "arith"
    seed: int = 0
    batch: int = 32
    shape: ModelShape = field(default_factory=ModelShape)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=2500, lr=1e-3, warmup=100))
    # One thread: on the shared 2-core machine two threads ran a (32, 140) step in 4.1 s
    # against 0.7-1.3 s for one (load average ~4); on an idle machine pass --threads 2.
    threads: int = 1
    val_questions: int = 128  # greedy accuracy on the validation split, logged in train.json


def prompt_format() -> PromptFormat:
    spec: dict[str, Any] = arith.PromptSpec().ponder_json()
    return PromptFormat(**{k: v for k, v in spec.items() if k in PromptFormat.__dataclass_fields__})


def example_stream(tokenizer: Any, fmt: PromptFormat, seed: int) -> Iterator[Example]:
    for q in arith.stream("train", seed, arith.TRAIN_MIX):
        yield encode_example(tokenizer, format_prompt(tokenizer, fmt, q.question), q.solution)


def train_policy(recipe: PolicyRecipe, out: Path, *, command: str = "", save_every: int = 0) -> dict[str, Any]:
    """Train and save; returns the run's summary (also written to ``out/train.json``)."""
    if recipe.task != "arith":
        raise InvalidArgument("task", f"unknown task {recipe.task!r}; the built-in task is 'arith'")
    torch.set_num_threads(recipe.threads)
    random.seed(recipe.seed)
    tokenizer = byte_tokenizer()
    fmt = prompt_format()
    model = new_model(recipe.shape, recipe.seed)
    batches = bucketed(example_stream(tokenizer, fmt, recipe.seed), recipe.batch, seed=recipe.seed)
    started = time.time()
    on_step = None
    if save_every:

        def on_step(step: int, loss: float) -> None:
            if (step + 1) % save_every == 0 and step + 1 < recipe.loop.steps:
                save_checkpoint(model, tokenizer, out / f"step-{step + 1}", arith.PromptSpec().ponder_json())

    stats = train_loop(model, batches, recipe.loop, desc="train policy", on_step=on_step)
    val = validate(model, tokenizer, fmt, recipe.val_questions, recipe.seed)
    summary = {
        "recipe": asdict(recipe),
        "command": command,
        "train": stats,
        "validation_greedy_accuracy": val,
        "wall_seconds": time.time() - started,
        "torch_threads": recipe.threads,
        "load_average": _loadavg(),
    }
    files = save_checkpoint(model, tokenizer, out, arith.PromptSpec().ponder_json(), summary)
    manifest.update(out.parent, out.name, files, command)
    return summary


def validate(model: Any, tokenizer: Any, fmt: PromptFormat, n: int, seed: int) -> float:
    """Greedy accuracy on ``n`` validation questions (0 questions: skipped, returns -1)."""
    if n <= 0:
        return -1.0
    from ponder.training.grading import sample_solutions

    qs = arith.questions("validation", n, seed=seed)
    samples = sample_solutions(model, tokenizer, fmt, qs, 1, temperature=0.0, seed=seed)
    return samples.mean()


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def parser() -> argparse.ArgumentParser:
    d = PolicyRecipe()
    p = argparse.ArgumentParser(prog="ponder train policy", description=__doc__.splitlines()[0])
    p.add_argument("--task", default=d.task, help="the task to train on (built in: arith)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint directory")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--steps", type=int, default=d.loop.steps, help="optimizer steps")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.loop.lr)
    p.add_argument("--warmup", type=int, default=d.loop.warmup)
    p.add_argument("--layers", type=int, default=d.shape.layers)
    p.add_argument("--width", type=int, default=d.shape.width)
    p.add_argument("--heads", type=int, default=d.shape.heads)
    p.add_argument("--ffn", type=int, default=d.shape.ffn)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 (slower on CPUs with bf16)")
    p.add_argument("--val-questions", type=int, default=d.val_questions)
    p.add_argument("--save-every", type=int, default=0, help="also save out/step-N every N steps")
    return p


def recipe_from_args(args: argparse.Namespace) -> PolicyRecipe:
    if args.steps < 1 or args.batch < 1:
        raise InvalidArgument("steps", "steps and batch must be >= 1")
    if args.width % args.heads:
        raise InvalidArgument("width", f"width {args.width} is not a multiple of heads {args.heads}")
    shape = ModelShape(layers=args.layers, width=args.width, heads=args.heads, kv_heads=args.heads, ffn=args.ffn)
    loop = LoopConfig(steps=args.steps, lr=args.lr, warmup=min(args.warmup, args.steps), bf16=not args.no_bf16)
    return PolicyRecipe(
        task=args.task, seed=args.seed, batch=args.batch, shape=shape, loop=loop, threads=args.threads,
        val_questions=args.val_questions,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    recipe = recipe_from_args(args)
    command = "ponder train policy " + " ".join(argv)
    summary = train_policy(recipe, args.out, command=command, save_every=args.save_every)
    print(json.dumps({
        "out": str(args.out),
        "seconds": round(summary["wall_seconds"], 1),
        "final_loss": round(summary["train"]["final_loss_ema"], 4),
        "validation_greedy_accuracy": summary["validation_greedy_accuracy"],
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
