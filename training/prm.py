"""``ponder train prm``: a value-head PRM on the policy's own step-end hidden states, trained
the paper's way — Monte Carlo soft labels from the policy's rollouts, BCE, early stopping on
held-out questions.

Defaults are the paper's 16 samples × 16 rollouts scaled down to fit minutes on two CPU cores
(see docs/quality.md for the measured time); the labels are saved as JSON lines so the head can
be re-fit without re-sampling (``--labels``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ponder.proto.config import DEFAULT_TEMPERATURE
from ponder.proto.errors import InvalidArgument
from ponder.workers.prm.value_head import ValueHead
from ponder.tasks import arith
from ponder.training import manifest
from ponder.training.checkpoint import load_checkpoint
from ponder.training.mc_labels import (
    LabeledSolution,
    ModelRollouts,
    load_labels,
    mc_label,
    save_labels,
    step_features,
)

log = logging.getLogger(__name__)
DEFAULT_POLICY = Path("artifacts/arith/policy")
DEFAULT_OUT = Path("artifacts/arith/value_head.safetensors")


@dataclass(frozen=True)
class PrmRecipe:
    task: str = "arith"
    seed: int = 0
    # Many questions, few rollouts: a prefix that holds an arithmetic slip fails every rollout,
    # so 2 rollouts already label it 0, and the verifier needs many distinct slips to learn from.
    # With 256 questions × 4 samples × 4 rollouts (14.9K rollouts) the value head reached held-out
    # BCE 0.541 and the separate PRM model overfit after ~2 epochs (best held-out BCE 0.554).
    questions: int = 1024  # training-split questions to label
    val_questions: int = 128  # validation-split questions (early stopping)
    samples: int = 4  # solutions per question (paper: 16)
    rollouts: int = 2  # rollouts per step prefix (paper: 16)
    temperature: float = DEFAULT_TEMPERATURE
    kind: str = "mlp"
    mlp_hidden: int = 0
    lr: float = 3e-3
    weight_decay: float = 1e-2
    batch: int = 256
    max_epochs: int = 300
    patience: int = 20
    threads: int = 1
    # Rollouts in bf16 were 1.5x faster on the machine that trained the committed MC labels
    # (avx512_bf16); on a CPU without it bf16 is emulated (samples at ~4 seq/s against ~13 in
    # fp32, measured 2026-12-02), so fp32 is the default. Features are always fp32.
    bf16_rollouts: bool = False
    # "mc": Monte Carlo labels (the paper's recipe; ``rollouts`` per step). "exact": the arith
    # checker's process labels (every step from the first wrong one on is bad), no rollouts.
    labels: str = "mc"
    model_steps: int = 3000  # optimizer steps of the separate PRM model with exact labels (early-stopped)
    # "checker" labels only: slipped copies per worked solution (training/checker_labels.py),
    # samples per validation question for early stopping on within-question AUC, and a time cap.
    synthetic_negatives: int = 3
    val_samples: int = 16
    model_minutes: float = 55.0


def label_split(
    model: Any, tokenizer: Any, fmt: Any, split: str, n: int, recipe: PrmRecipe, seed: int
) -> tuple[list[LabeledSolution], dict[str, int]]:
    from tqdm import tqdm

    qs = arith.questions(split, n, seed=seed, mix=arith.EVAL_MIX)
    with tqdm(desc=f"rollouts ({split})", unit="seq", dynamic_ncols=True, mininterval=2.0) as bar:
        roll = ModelRollouts(
            model, tokenizer, fmt, temperature=recipe.temperature,
            dtype=torch.bfloat16 if recipe.bf16_rollouts else torch.float32, progress=bar,
        )
        return mc_label(qs, roll, samples=recipe.samples, rollouts_per_step=recipe.rollouts, seed=seed, log=log.info)


def exact_label_split(
    model: Any, tokenizer: Any, fmt: Any, split: str, n: int, recipe: PrmRecipe, seed: int
) -> tuple[list[LabeledSolution], dict[str, int]]:
    """``recipe.samples`` sampled solutions per question, each step labelled exactly by the arith
    checker (:func:`ponder.tasks.arith.step_labels`); samples without a parsable answer
    are dropped, as for the Monte Carlo labels."""
    from tqdm import tqdm

    from ponder.workers.answers import extract_answer, is_correct
    from ponder.training.grading import sample_solutions
    from ponder.training.mc_labels import cut_steps

    qs = arith.questions(split, n, seed=seed, mix=arith.EVAL_MIX)
    with tqdm(total=n * recipe.samples, desc=f"samples ({split})", unit="seq", dynamic_ncols=True, mininterval=2.0) as bar:
        samples = sample_solutions(
            model, tokenizer, fmt, qs, recipe.samples, temperature=recipe.temperature, seed=seed,
            dtype=torch.bfloat16 if recipe.bf16_rollouts else torch.float32, progress=bar,
        )
    out: list[LabeledSolution] = []
    for q, row in zip(qs, samples.texts):
        for text in row:
            steps = cut_steps(text)
            if steps is None:
                continue
            correct = is_correct(extract_answer(steps[-1]), q.answer)
            out.append(LabeledSolution(q.question, q.answer, steps, arith.step_labels(steps, q.answer), correct))
    counts = {"sampled": n * recipe.samples, "kept": len(out), "dropped": n * recipe.samples - len(out), "rollouts": 0}
    return out, counts


def relabel_exact(sols: Sequence[LabeledSolution]) -> list[LabeledSolution]:
    """The same solutions (e.g. those the Monte Carlo labeller sampled) with exact labels."""
    return [LabeledSolution(s.question, s.gold, s.steps, arith.step_labels(s.steps, s.gold), s.correct) for s in sols]


def fit_head(
    X: torch.Tensor, y: torch.Tensor, Xv: torch.Tensor, yv: torch.Tensor, recipe: PrmRecipe
) -> tuple[ValueHead, dict[str, Any]]:
    """BCE on soft labels with AdamW; keeps the epoch with the lowest held-out BCE and stops
    after ``patience`` epochs without improvement."""
    gen = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    head = ValueHead(X.shape[1], recipe.kind, recipe.mlp_hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    best, best_state, best_epoch, history = float("inf"), None, -1, []
    for epoch in range(recipe.max_epochs):
        head.train()
        perm = torch.randperm(X.shape[0], generator=gen)
        for i in range(0, len(perm), recipe.batch):
            idx = perm[i : i + recipe.batch]
            loss = bce(head(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            val = float(bce(head(Xv), yv))
            train = float(bce(head(X), y))
        history.append((train, val))
        if val < best - 1e-5:
            best, best_epoch = val, epoch
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        elif epoch - best_epoch >= recipe.patience:
            break
    assert best_state is not None
    head.load_state_dict(best_state)
    head.eval()
    # The floor: BCE of predicting every held-out label exactly (soft labels have entropy).
    floor = float(bce(torch.logit(yv.clamp(1e-4, 1 - 1e-4)), yv))
    const = float(bce(torch.full_like(yv, float(torch.logit(y.mean().clamp(1e-4, 1 - 1e-4)))), yv))
    return head, {
        "best_epoch": best_epoch, "epochs_run": len(history), "val_bce": best, "val_bce_floor": floor,
        "val_bce_constant": const, "train_bce": history[best_epoch][0],
    }


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC of scores against binary labels (ties count half)."""
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos.unsqueeze(1) - neg.unsqueeze(0)
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def grouped_auc(scores: Sequence[float], labels: Sequence[bool], groups: Sequence[Any]) -> float:
    """Within-group ROC AUC: over every (positive, negative) pair *of the same group* (a group
    is a question, the items its samples), how often the positive scores higher (ties half).
    NaN when no group holds both classes. Selection among one question's samples can only beat
    majority voting through this ranking (docs/quality.md)."""
    by: dict[Any, tuple[list[float], list[float]]] = {}
    for s, y, g in zip(scores, labels, groups):
        by.setdefault(g, ([], []))[0 if y else 1].append(float(s))
    hits, pairs = 0.0, 0
    for pos, neg in by.values():
        for a in pos:
            for b in neg:
                hits += 1.0 if a > b else 0.5 if a == b else 0.0
        pairs += len(pos) * len(neg)
    return hits / pairs if pairs else float("nan")


def train_prm(
    recipe: PrmRecipe, policy: Path, out: Path, labels: Path | None, command: str, model_out: Path | None = None
) -> dict[str, Any]:
    if recipe.task != "arith":
        raise InvalidArgument("task", f"unknown task {recipe.task!r}; the built-in task is 'arith'")
    if recipe.labels == "checker":
        if model_out is None:
            raise InvalidArgument("model_out", "--label-kind checker trains a PRM model: give --model-out")
        return train_checker_prm(recipe, policy, labels, command, model_out)
    torch.set_num_threads(recipe.threads)
    model, tokenizer, fmt = load_checkpoint(policy)
    started = time.time()
    labels_path = labels or out.parent / ("prm_labels_exact.jsonl" if recipe.labels == "exact" else "prm_labels.jsonl")
    counts: dict[str, Any] = {}
    if labels is not None and labels.exists():
        data = load_labels(labels)
        train, val = data["train"], data["validation"]
        if recipe.labels == "exact":  # the same solutions, each step relabelled by the checker
            train, val = relabel_exact(train), relabel_exact(val)
            counts["relabelled_from"] = str(labels)
    else:
        labels_path.unlink(missing_ok=True)
        labeller = exact_label_split if recipe.labels == "exact" else label_split
        train, counts["train"] = labeller(model, tokenizer, fmt, "train", recipe.questions, recipe, recipe.seed)
        val, counts["validation"] = labeller(
            model, tokenizer, fmt, "validation", recipe.val_questions, recipe, recipe.seed + 1
        )
        save_labels(labels_path, train, "train")
        save_labels(labels_path, val, "validation")
    label_seconds = time.time() - started
    X, y, _ = step_features(model, tokenizer, fmt, train)
    Xv, yv, _ = step_features(model, tokenizer, fmt, val)
    head, fit = fit_head(X, y, Xv, yv, recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    head.half().save(out)
    with torch.no_grad():
        sv = torch.sigmoid(head.float()(Xv))
    last = torch.tensor([i == len(s.labels) - 1 for s in val for i in range(len(s.labels))])
    summary = {
        "recipe": asdict(recipe),
        "command": command,
        "policy": str(policy),
        "labels": str(labels_path),
        "counts": counts,
        "train_steps": int(X.shape[0]),
        "val_steps": int(Xv.shape[0]),
        "train_solution_accuracy": sum(s.correct for s in train) / max(1, len(train)),
        "fit": fit,
        "val_auc_steps": auc(sv, yv),
        "val_auc_final_step": auc(sv[last], yv[last]),
        "val_within_question_auc": grouped_auc(
            sv[last].tolist(), [s.correct for s in val], [s.question for s in val]
        ),
        "label_seconds": label_seconds,
    }
    if model_out is not None:
        from ponder.training.prm_model import PrmModelRecipe, train_prm_model

        pm_recipe = PrmModelRecipe(seed=recipe.seed)
        if recipe.labels == "exact":
            # Measured (docs/quality.md): batches of every sample of a few questions, and the
            # checkpoint picked by held-out within-question AUC, not by BCE.
            pm_recipe = PrmModelRecipe(
                seed=recipe.seed, steps=recipe.model_steps, questions_per_batch=max(1, 32 // recipe.samples),
                select="within_auc", eval_every=100, patience=5,
            )
        pm = train_prm_model(model, tokenizer, train, val, pm_recipe, model_out, command)
        summary["prm_model"] = {k: pm[k] for k in ("val_bce", "val_within_question_auc", "best_step", "seconds")}
        manifest.update(model_out.parent, model_out.name, [Path(f) for f in pm["files"]], command)
    summary["wall_seconds"] = time.time() - started
    summary["load_average"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    files = [out, out.with_suffix(".json")]
    if labels_path.resolve().parent == out.resolve().parent:
        files.append(labels_path)
    manifest.update(out.parent, out.stem, files, command)
    return summary


def train_checker_prm(
    recipe: PrmRecipe, policy: Path, labels: Path | None, command: str, model_out: Path
) -> dict[str, Any]:
    """A PRM model trained to check each step: a copy of the policy fine-tuned on batches that
    hold (a) the policy's own samples of a few training questions with the checker's exact labels
    (``labels``' training split, or freshly sampled) and (b) synthetic groups — a fresh training
    question's worked solution and ``synthetic_negatives`` copies with one step slipped the way
    the policy slips (:mod:`ponder.training.checker_labels`). The checkpoint is picked by
    within-question AUC on ``val_samples`` policy samples of each of ``val_questions`` validation
    questions; training stops after ``model_minutes``."""
    from ponder.training import checker_labels
    from ponder.training.prm_model import PrmModelRecipe, train_prm_model

    torch.set_num_threads(recipe.threads)
    model, tokenizer, fmt = load_checkpoint(policy)
    started = time.time()
    counts: dict[str, Any] = {}
    if labels is not None and labels.exists():
        train = relabel_exact(load_labels(labels)["train"])
        counts["train_relabelled_from"] = str(labels)
    else:
        train, counts["train"] = exact_label_split(model, tokenizer, fmt, "train", recipe.questions, recipe, recipe.seed)
    val_recipe = PrmRecipe(**{**asdict(recipe), "samples": recipe.val_samples})
    val, counts["validation"] = exact_label_split(
        model, tokenizer, fmt, "validation", recipe.val_questions, val_recipe, recipe.seed + 1
    )
    label_seconds = time.time() - started
    samples_per_q = max(1, round(len(train) / max(1, len({s.question for s in train}))))
    pm_recipe = PrmModelRecipe(
        seed=recipe.seed, steps=recipe.model_steps, questions_per_batch=max(1, 16 // samples_per_q) if train else 0,
        synthetic_groups=max(1, 16 // (1 + recipe.synthetic_negatives)), select="within_auc", eval_every=100,
        # Patient: the held-out ranking dips before the slips are learned (measured: 0.52 at step
        # 100); the time cap, not the patience, usually ends the run.
        patience=10, max_seconds=60.0 * recipe.model_minutes,
    )
    synthetic = checker_labels.groups(recipe.synthetic_negatives, seed=recipe.seed + 7)
    meta = {
        "labels": "checker", "prm_recipe": asdict(recipe), "policy": str(policy), "counts": counts,
        "train_policy_samples": len(train), "val_policy_samples": len(val), "label_seconds": label_seconds,
        "slips": {"result": dict(checker_labels.RESULT_SLIPS), "remainder": dict(checker_labels.REMAINDER_SLIPS),
                  "remainder_share": checker_labels.REMAINDER_SHARE, "propagate_share": checker_labels.PROPAGATE_SHARE},
    }
    pm = train_prm_model(model, tokenizer, train, val, pm_recipe, model_out, command, synthetic=synthetic, meta=meta)
    wall = time.time() - started
    manifest.update(model_out.parent, model_out.name, [Path(f) for f in pm["files"]], command)
    return {
        "val_within_question_auc": pm["val_within_question_auc"], "best_step": pm["best_step"],
        "label_seconds": label_seconds, "wall_seconds": wall, "out": str(model_out),
    }


def parser() -> argparse.ArgumentParser:
    d = PrmRecipe()
    p = argparse.ArgumentParser(prog="ponder train prm", description=__doc__.splitlines()[0])
    p.add_argument("--task", default=d.task)
    p.add_argument("--policy", type=Path, default=DEFAULT_POLICY, help="the policy checkpoint to label with")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="value head file (.safetensors)")
    p.add_argument("--labels", type=Path, default=None, help="reuse (or write) MC labels here (.jsonl)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--questions", type=int, default=d.questions)
    p.add_argument("--val-questions", type=int, default=d.val_questions)
    p.add_argument("--samples", type=int, default=d.samples, help="solutions per question (paper: 16)")
    p.add_argument("--rollouts", type=int, default=d.rollouts, help="rollouts per step (paper: 16)")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--kind", choices=("linear", "mlp"), default=d.kind)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--bf16-rollouts", action="store_true", help="rollouts in bf16 (faster only on CPUs with avx512_bf16)")
    p.add_argument("--label-kind", choices=("mc", "exact", "checker"), default=d.labels,
                   help="mc: Monte Carlo rollouts (the paper); exact: the arith checker's process labels; "
                   "checker: exact labels plus synthetic slipped solutions, a PRM model only (needs --model-out)")
    p.add_argument("--synthetic-negatives", type=int, default=d.synthetic_negatives,
                   help="checker labels: slipped copies per worked solution")
    p.add_argument("--val-samples", type=int, default=d.val_samples,
                   help="checker labels: policy samples per validation question (early stopping)")
    p.add_argument("--model-minutes", type=float, default=d.model_minutes,
                   help="checker labels: stop training the PRM model after this many minutes")
    p.add_argument("--model-steps", type=int, default=d.model_steps, help="PRM model steps (exact labels)")
    p.add_argument("--model-out", type=Path, default=None,
                   help="also fine-tune a separate PRM model (a copy of the policy) on the same labels, saved here")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser().parse_args(argv)
    if min(a.questions, a.val_questions, a.samples, a.rollouts) < 1:
        raise InvalidArgument("questions", "questions, val-questions, samples and rollouts must be >= 1")
    if a.label_kind == "checker" and min(a.synthetic_negatives, a.val_samples) < 1:
        raise InvalidArgument("synthetic_negatives", "synthetic-negatives and val-samples must be >= 1")
    recipe = PrmRecipe(
        task=a.task, seed=a.seed, questions=a.questions, val_questions=a.val_questions, samples=a.samples,
        rollouts=a.rollouts, temperature=a.temperature, kind=a.kind, threads=a.threads,
        bf16_rollouts=a.bf16_rollouts, labels=a.label_kind, model_steps=a.model_steps,
        synthetic_negatives=a.synthetic_negatives, val_samples=a.val_samples, model_minutes=a.model_minutes,
    )
    s = train_prm(recipe, a.policy, a.out, a.labels, "ponder train prm " + " ".join(argv), a.model_out)
    if recipe.labels == "checker":
        print(json.dumps(s))
        return 0
    print(json.dumps({k: s[k] for k in ("val_auc_steps", "val_auc_final_step", "wall_seconds")} | {"out": str(a.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
