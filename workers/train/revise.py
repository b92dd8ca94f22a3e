"""``ponder train revise``: a reviser fine-tuned from the policy on the paper's revision
trajectories, so the ``revision`` strategy can pass earlier attempts in context.

Trajectories (Snell et al., §6.1): sample many solutions per training question from the policy;
for each correct one, put 0–4 wrong ones in context, ordered so that the last is the wrong one
closest to the correct solution by character edit distance, and train on the correct solution
only. The prompt is ``format_prompt(question, attempts)`` with the checkpoint's own
``ponder.json``, i.e. exactly what the revision strategy builds at inference time.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ponder.proto.errors import InvalidArgument
from ponder.workers.models import PromptFormat, format_prompt
from ponder.workers.tasks import arith
from ponder.workers.train import manifest
from ponder.workers.train.checkpoint import load_checkpoint, save_checkpoint
from ponder.workers.train.evaluate import sample_solutions
from ponder.workers.train.mc_labels import cut_steps
from ponder.workers.train.policy import prompt_format
from ponder.workers.train.sft import Example, LoopConfig, bucketed, encode_example, train_loop

log = logging.getLogger(__name__)
DEFAULT_POLICY = Path("artifacts/arith/policy")
DEFAULT_OUT = Path("artifacts/arith/reviser")
MAX_WRONG = 4


@dataclass(frozen=True)
class Trajectory:
    question: str
    attempts: tuple[str, ...]  # wrong attempts, the closest to ``target`` last
    target: str  # a correct solution


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings (characters)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def build_trajectories(
    question: str, correct: Sequence[str], wrong: Sequence[str], rng: random.Random, max_wrong: int = MAX_WRONG
) -> list[Trajectory]:
    """One trajectory per correct solution: ``k ~ U{0..min(max_wrong, len(wrong))}`` distinct
    wrong attempts, shuffled, then the one closest to the target moved last."""
    out: list[Trajectory] = []
    pool = list(dict.fromkeys(wrong))  # distinct, in order
    for target in correct:
        k = rng.randint(0, min(max_wrong, len(pool)))
        chosen = rng.sample(pool, k)
        if chosen:
            closest = min(range(k), key=lambda i: (edit_distance(chosen[i], target), i))
            chosen.append(chosen.pop(closest))
        out.append(Trajectory(question, tuple(chosen), target))
    return out


@dataclass(frozen=True)
class ReviseRecipe:
    task: str = "arith"
    seed: int = 0
    # Many questions, few trajectories each: every trajectory of a question has the same
    # (unique) correct solution as its target, so 512 questions × up to 4 trajectories drove
    # the target loss to 0.01 (memorised) in 400 steps.
    questions: int = 1024  # training-split questions sampled for trajectories
    samples: int = 12  # solutions sampled per question (paper: 64)
    temperature: float = 1.0  # "high temperature" sampling for diverse attempts
    max_per_question: int = 2  # trajectories kept per question (one per correct solution)
    steps: int = 400
    batch: int = 16
    lr: float = 3e-4
    threads: int = 1


def sample_trajectories(model: Any, tokenizer: Any, fmt: PromptFormat, recipe: ReviseRecipe) -> tuple[list[Trajectory], dict[str, Any]]:
    from tqdm import tqdm

    qs = arith.questions("train", recipe.questions, seed=recipe.seed + 7, mix=arith.EVAL_MIX)
    with tqdm(total=len(qs) * recipe.samples, desc="attempts", unit="seq", dynamic_ncols=True, mininterval=2.0) as bar:
        samples = sample_solutions(
            model, tokenizer, fmt, qs, recipe.samples, temperature=recipe.temperature, seed=recipe.seed,
            dtype=torch.bfloat16, progress=bar,
        )
    rng = random.Random(recipe.seed)
    trajs: list[Trajectory] = []
    n_wrong = n_right = 0
    for q, texts, grades in zip(qs, samples.texts, samples.correct):
        right, wrong = [], []
        for text, ok in zip(texts, grades):
            steps = cut_steps(text)
            if steps is None:
                continue  # no parsable answer: neither a target nor a useful wrong attempt
            (right if ok else wrong).append(arith.STEP_DELIMITER.join(steps))
        n_wrong += len(wrong)
        n_right += len(right)
        trajs += build_trajectories(q.question, right[: recipe.max_per_question], wrong, rng)
    stats = {
        "questions": len(qs), "correct_samples": n_right, "wrong_samples": n_wrong, "trajectories": len(trajs),
        "attempts_in_context": {k: sum(len(t.attempts) == k for t in trajs) for k in range(MAX_WRONG + 1)},
    }
    return trajs, stats


def examples(tokenizer: Any, fmt: PromptFormat, trajs: Sequence[Trajectory], seed: int) -> Iterator[Example]:
    encoded = [
        encode_example(tokenizer, format_prompt(tokenizer, fmt, t.question, t.attempts), t.target) for t in trajs
    ]
    rng = random.Random(seed)
    while True:
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for i in order:
            yield encoded[i]


def train_reviser(recipe: ReviseRecipe, policy: Path, out: Path, command: str) -> dict[str, Any]:
    if recipe.task != "arith":
        raise InvalidArgument("task", f"unknown task {recipe.task!r}; the built-in task is 'arith'")
    torch.set_num_threads(recipe.threads)
    started = time.time()
    model, tokenizer, fmt = load_checkpoint(policy)
    trajs, stats = sample_trajectories(model, tokenizer, fmt, recipe)
    if not trajs:
        raise InvalidArgument("policy", "the policy answered no training question correctly; no trajectories")
    sample_seconds = time.time() - started
    # Revision prompts carry up to 4 earlier attempts (~1,300 characters at most on the
    # eval mix), past the policy's 1,024; RoPE has no learned positions, so only the bound moves.
    model.config.max_position_embeddings = max(int(model.config.max_position_embeddings), 2048)
    # Trajectories are written in the reviser's own format (the one saved to its ponder.json),
    # whatever the policy checkpoint's file says.
    rev_fmt = prompt_format()
    batches = bucketed(examples(tokenizer, rev_fmt, trajs, recipe.seed), recipe.batch, seed=recipe.seed)
    loop = LoopConfig(steps=recipe.steps, lr=recipe.lr, warmup=min(50, recipe.steps), min_lr_ratio=0.1)
    fit = train_loop(model, batches, loop, desc="train reviser")
    summary = {
        "recipe": asdict(recipe), "command": command, "policy": str(policy), "data": stats, "train": fit,
        "sample_seconds": sample_seconds, "wall_seconds": time.time() - started,
        "load_average": [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]],
    }
    files = save_checkpoint(model, tokenizer, out, arith.PromptSpec().ponder_json(), summary)
    manifest.update(out.parent, out.name, files, command)
    return summary


def parser() -> argparse.ArgumentParser:
    d = ReviseRecipe()
    p = argparse.ArgumentParser(prog="ponder train revise", description=__doc__.splitlines()[0])
    p.add_argument("--task", default=d.task)
    p.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--questions", type=int, default=d.questions)
    p.add_argument("--samples", type=int, default=d.samples, help="attempts sampled per question (paper: 64)")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--threads", type=int, default=d.threads)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser().parse_args(argv)
    if min(a.questions, a.samples, a.steps, a.batch) < 1:
        raise InvalidArgument("questions", "questions, samples, steps and batch must be >= 1")
    recipe = ReviseRecipe(
        task=a.task, seed=a.seed, questions=a.questions, samples=a.samples, temperature=a.temperature,
        steps=a.steps, batch=a.batch, lr=a.lr, threads=a.threads,
    )
    s = train_reviser(recipe, a.policy, a.out, "ponder train revise " + " ".join(argv))
    print(json.dumps({"out": str(a.out), "trajectories": s["data"]["trajectories"], "seconds": round(s["wall_seconds"], 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
