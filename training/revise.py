"""``ponder train revise``: a reviser fine-tuned from the policy on revision trajectories, so the
``revision`` strategy can pass earlier attempts in context.

Trajectories (after Snell et al., §6.1): sample a few solutions per training question from the
policy; each trajectory puts 1–4 of them in context (each count equally often) and trains on the
question's worked solution only, so a mostly-right attempt shows correct intermediate steps and
a target sharing a right prefix with a slipped attempt teaches keeping the right part. By
default the attempts are right and wrong ones alike (as the reviser's own chain holds them) in
random order; ``--context wrong --order closest_last`` gives the paper's trajectories;
``--context chain`` (starting from a reviser: ``--policy artifacts/arith/reviser``) puts in
context the first 1–4 attempts of that reviser's own revision chain on the question, as the
revision strategy will at test time, where each attempt has seen the earlier ones; such a stage
trains on questions its start has not seen, and its train.json keeps the earlier stages.
``--context scored --attempt-view scored`` (starting from a reviser) runs its chains through the
search loop as a worker does (``--first-attempt``'s first attempt, the starting reviser's
revisions, the default verifier scoring each attempt) and trains a reviser whose prompt shows
each earlier attempt's score, the best-scored last (``PromptFormat.attempt_order = "score"``);
its held-out chains run through the search loop too, since only it computes the scores
(``--attempt-view scored_full`` shows each scored attempt's whole text instead of its results;
``--chains-file`` saves the drawn chains, so a stage can be retrained without redrawing them). The
committed ``arith-reviser`` is two stages: ``ponder train revise`` then ``ponder train revise
--policy artifacts/arith/reviser --context chain --lr 5e-5 --steps 480``. Plain
examples (no attempts, fresh questions) make up a fifth of the batches, so attempts-in-context
0..4 are equally common and attempt 1 keeps the policy's skill. Every ``--eval-every`` steps
short revision chains on validation questions score the checkpoint (mean pass@1 over attempts
1–4); the best one is kept and training stops after ``--patience`` evaluations without gain.
The prompt is ``format_prompt(question, attempts)`` with the checkpoint's own ``ponder.json``,
i.e. exactly what the revision strategy builds at inference time.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ponder.proto.config import DEFAULT_TEMPERATURE
from ponder.proto.errors import InvalidArgument
from ponder.workers.models import PromptFormat, format_prompt
from ponder.tasks import arith
from ponder.training import manifest
from ponder.training.checkpoint import load_checkpoint, save_checkpoint
from ponder.training.grading import sample_solutions
from ponder.training.mc_labels import cut_steps
from ponder.training.train_policy import prompt_format
from ponder.training.revise_eval import EarlyStopping, held_out_score, revision_chains
from ponder.training.sft import Example, LoopConfig, bucketed, encode_example, train_loop

log = logging.getLogger(__name__)
DEFAULT_POLICY = Path("artifacts/arith/policy")
DEFAULT_OUT = Path("artifacts/arith/reviser")
MAX_WRONG = 4


@dataclass(frozen=True)
class Trajectory:
    question: str
    attempts: tuple[str, ...]  # wrong attempts, the closest to ``target`` last
    target: str  # a correct solution
    scores: tuple[float | None, ...] = ()  # the verifier's score of each attempt (``--context scored``)


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
    # The 2024-11-29 recipe (1,024 questions × 12 samples, wrong attempts only, 400 steps at
    # 3e-4) memorised its targets (loss 0.0075): attempt 1 fell 0.07 below the policy and
    # pass@1 fell from attempt 3 on. This one: fewer samples per question, every trajectory's
    # target the question's worked solution, attempts in context balanced over 0..4, plain
    # (no-attempt) examples on fresh questions, a lower learning rate, and early stopping on
    # held-out revision chains.
    # 2026-12-04: 2,048 questions and 720 steps (held-out score still rising at 240 steps: 0.547
    # there, 0.617 at 720; 24 min here); earlier attempts shown as what their steps computed
    questions: int = 2048  # training-split questions (EVAL_MIX) whose samples become attempts
    samples: int = 4  # solutions sampled per question (paper: 64)
    temperature: float = DEFAULT_TEMPERATURE  # the temperature the revision chains run at
    # "mixed": attempts are any of the question's samples, right or wrong, as the reviser's own
    # chain holds them at test time; "wrong": wrong samples only (the paper's trajectories);
    # "chain": the first k attempts of the starting reviser's own chain (``samples`` long), which
    # unlike independent samples depend on each other (a copied wrong answer looks like consensus)
    context: str = "mixed"
    # "random": attempts in random order (at test time the order is the chain's, carrying no
    # sign of which is right); "closest_last": the attempt closest to the target last (paper).
    order: str = "random"
    # how an earlier attempt appears in the prompt: "full" (its worked solution), "results"
    # (only what each step computed: "Attempt 2: 79, 125, 213"), "answer" (only its answer)
    attempt_view: str = "results"
    # --context scored: the model that writes each chain's first attempt, as on a worker (its
    # default verifier scores the attempts)
    first_attempt: str = str(DEFAULT_POLICY)
    # --context scored: a JSON file holding the drawn chains (read when it holds this recipe's
    # chains, else drawn and written there), so a stage can be retrained without redrawing them
    chains_file: str | None = None
    per_question: int = 2  # revision trajectories per question, attempts-in-context 1..4 balanced
    plain_share: float = 0.2  # examples without attempts (fresh TRAIN_MIX questions) — 0..4 equally often
    steps: int = 720
    batch: int = 16
    lr: float = 3e-4
    warmup: int = 20
    bf16: bool = False  # bf16 autocast is emulated (10x slower) on CPUs without avx512_bf16
    eval_every: int = 80  # steps between held-out evaluations
    patience: int = 3  # evaluations without improvement before stopping
    val_questions: int = 48  # validation-split questions (EVAL_MIX) for early stopping
    val_chains: int = 2
    val_attempts: int = 4
    threads: int = 1


CONTEXTS = ("mixed", "wrong", "chain", "scored")
# the reviser's attempt_template for each attempt_view (PromptFormat documents the fields)
ATTEMPT_VIEWS = {"full": "Attempt {index}:\n{attempt}\n\n", "results": "Attempt {index}: {results}\n",
                 "answer": "Attempt {index}: {answer}\n", "scored": "Attempt {index} ({score}): {results}\n",
                 "scored_full": "Attempt {index} ({score}):\n{attempt}\n\n"}
# how each attempt_view arranges the attempts (PromptFormat.attempt_order): a scored view puts the
# verifier's best attempt last, where the reviser learns to look first
ATTEMPT_ORDER = {"scored": "score", "scored_full": "score"}
ORDERS = ("random", "closest_last")


def balanced_ks(n_questions: int, per_question: int, rng: random.Random, max_k: int = MAX_WRONG) -> list[list[int]]:
    """Attempts-in-context counts for each question's trajectories: every count in 1..max_k
    equally often overall, and a question's own trajectories different counts while it can."""
    slots = n_questions * per_question
    ks = [1 + i % max_k for i in range(slots)]
    rng.shuffle(ks)
    out: list[list[int]] = []
    for i in range(n_questions):
        mine = ks[i * per_question : (i + 1) * per_question]
        out.append(mine)
    return out


def revision_trajectories(
    question: str,
    target: str,
    pool: Sequence[str],
    ks: Sequence[int],
    rng: random.Random,
    order: str = "random",
) -> list[Trajectory]:
    """One trajectory per requested count ``k``: ``k`` distinct attempts of ``pool`` (fewer when
    the pool is smaller; none when it is empty), in random order or with the one closest to
    ``target`` last."""
    if order not in ORDERS:
        raise InvalidArgument("order", f"order must be one of {ORDERS}, got {order!r}")
    out: list[Trajectory] = []
    for k in ks:
        k = min(k, len(pool))
        if k == 0:
            continue
        chosen = [pool[i] for i in rng.sample(range(len(pool)), k)]
        if order == "closest_last":
            closest = min(range(k), key=lambda i: (edit_distance(chosen[i], target), i))
            chosen.append(chosen.pop(closest))
        out.append(Trajectory(question, tuple(chosen), target))
    return out


def question_seed(recipe: ReviseRecipe, stage: int = 0) -> int:
    """The training questions' seed: each stage of a reviser trained in stages gets questions its
    starting reviser has not trained on (its chains there would be right far more often than on
    new questions: 0.76 against 0.62 at attempt 1 when a stage reused its start's questions)."""
    return recipe.seed + 7 + 1000 * stage


def sample_trajectories(
    model: Any, tokenizer: Any, fmt: PromptFormat, recipe: ReviseRecipe, stage: int = 0, start: Path | None = None
) -> tuple[list[Trajectory], dict[str, Any]]:
    """The revision trajectories of stage ``stage`` (0: the first), on its own training
    questions: from the starting reviser's chains (``--context chain``), else from independent
    samples of the starting model."""
    if recipe.context not in CONTEXTS:
        raise InvalidArgument("context", f"context must be one of {CONTEXTS}, got {recipe.context!r}")
    seed = question_seed(recipe, stage)
    qs = arith.questions("train", recipe.questions, seed=seed, mix=arith.EVAL_MIX)
    if recipe.context == "scored":
        if start is None:
            raise InvalidArgument("context", "--context scored revises with the starting reviser: name it with --policy")
        trajs, stats = scored_trajectories(qs, recipe, start)
    else:
        make = chain_trajectories if recipe.context == "chain" else sampled_trajectories
        trajs, stats = make(model, tokenizer, fmt, qs, recipe)
    return trajs, {**stats, **context_stats(trajs, stats.pop("right_in_context")), "question_seed": seed}


def context_stats(trajs: Sequence[Trajectory], right_in_context: int) -> dict[str, Any]:
    """How many trajectories, how many attempts each holds, and the share of those attempts right."""
    n_att = sum(len(t.attempts) for t in trajs)
    return {
        "trajectories": len(trajs),
        "attempts_in_context": {k: sum(len(t.attempts) == k for t in trajs) for k in range(MAX_WRONG + 1)},
        "correct_share_of_attempts_in_context": right_in_context / max(1, n_att),
    }


def sampled_trajectories(
    model: Any, tokenizer: Any, fmt: PromptFormat, qs: Sequence[arith.Question], recipe: ReviseRecipe
) -> tuple[list[Trajectory], dict[str, Any]]:
    """``recipe.samples`` independent solutions per question; each trajectory holds k of them
    (right and wrong, or wrong only: ``recipe.context``) and the worked solution as its target."""
    from tqdm import tqdm

    with tqdm(total=len(qs) * recipe.samples, desc="attempts", unit="seq", dynamic_ncols=True, mininterval=2.0) as bar:
        samples = sample_solutions(
            model, tokenizer, fmt, qs, recipe.samples, temperature=recipe.temperature, seed=recipe.seed,
            dtype=torch.bfloat16 if recipe.bf16 else torch.float32, batch_size=128, progress=bar,
        )
    rng = random.Random(recipe.seed)
    ks = balanced_ks(len(qs), recipe.per_question, rng)
    trajs: list[Trajectory] = []
    n_wrong = n_right = n_unparsable = always_right = 0
    right_in_context = 0
    for q, texts, grades, mine in zip(qs, samples.texts, samples.correct, ks):
        right: list[str] = []
        wrong: list[str] = []
        for text, ok in zip(texts, grades):
            steps = cut_steps(text)
            if steps is None:
                n_unparsable += 1
                continue  # no parsable answer: what the strategy passes on is not a solution
            (right if ok else wrong).append(arith.STEP_DELIMITER.join(steps))
        n_wrong += len(wrong)
        n_right += len(right)
        always_right += not wrong
        pool = right + wrong if recipe.context == "mixed" else wrong
        # The target is the question's worked solution: a sampled "correct" solution can reach
        # the right answer through two compensating slips (108 + 18 = 116, then 116 - 57 = 69).
        new = revision_trajectories(q.question, q.solution, pool, mine, rng, recipe.order)
        right_in_context += sum(a in right for t in new for a in t.attempts)
        trajs += new
    stats = {
        "questions": len(qs), "samples_per_question": recipe.samples, "correct_samples": n_right,
        "wrong_samples": n_wrong, "unparsable_samples": n_unparsable, "questions_always_right": always_right,
        "policy_pass_at_1": n_right / max(1, len(qs) * recipe.samples), "right_in_context": right_in_context,
    }
    return trajs, stats


def chain_trajectories(
    model: Any, tokenizer: Any, fmt: PromptFormat, qs: Sequence[arith.Question], recipe: ReviseRecipe
) -> tuple[list[Trajectory], dict[str, Any]]:
    """One revision chain of ``recipe.samples`` attempts per question, run by ``model`` (a reviser
    whose prompt format is ``fmt``); each trajectory holds the chain's first k attempts in chain
    order (k balanced over 1..4) and the question's worked solution as its target."""
    from tqdm import tqdm

    with tqdm(total=len(qs) * recipe.samples, desc="chains", unit="seq", dynamic_ncols=True, mininterval=2.0) as bar:
        res = revision_chains(
            model, tokenizer, fmt, qs, 1, recipe.samples, temperature=recipe.temperature, seed=recipe.seed,
            dtype=torch.bfloat16 if recipe.bf16 else torch.float32, progress=bar,
        )
    rng = random.Random(recipe.seed)
    ks = balanced_ks(len(qs), recipe.per_question, rng)
    trajs: list[Trajectory] = []
    right_in_context = 0
    for q, attempts, grades, mine in zip(qs, res.attempts, res.correct, ks):
        for k in mine:
            k = min(k, len(attempts))
            trajs.append(Trajectory(q.question, tuple(attempts[:k]), q.solution))
            right_in_context += sum(grades[:k])
    n_right = sum(sum(g) for g in res.correct)
    stats = {
        "questions": len(qs), "samples_per_question": recipe.samples, "correct_samples": n_right,
        "wrong_samples": len(qs) * recipe.samples - n_right,
        "chain_pass_at_1_by_attempt": res.pass_at_1_by_step(),
        "questions_always_right": sum(all(g) for g in res.correct), "right_in_context": right_in_context,
    }
    return trajs, stats


@dataclass(frozen=True)
class Attempt:
    solution: str
    score: float | None
    correct: bool


def loop_chains(
    policy: Path, reviser: Path, qs: Sequence[arith.Question], chains: int, attempts: int, *, seed: int,
    temperature: float, progress: bool = True, verifier: str = "auto",
) -> list[list[Attempt]]:
    """Revision chains as a worker runs them (the ``revision`` strategy through the engine and the
    search loop): ``policy`` writes each chain's first attempt, ``reviser`` every revision, and
    ``verifier`` (``auto``: the policy's default, when it is a built-in model) scores each
    attempt, which the next prompt carries. ``chains`` chains of ``attempts`` per question;
    chain i is question ``i // chains``."""
    from ponder.evaluation.evaluate import Item, evaluate
    from ponder.workers.runtime import build_policy, build_verifier

    pol = build_policy(str(policy), "engine")
    scorer = build_verifier(verifier, pol, builtin_name(policy))
    rev = build_policy(str(reviser), "engine")
    items = [Item(q.question, q.answer) for q in qs for _ in range(chains)]
    (r,) = evaluate(pol, scorer, items, ["revision"], [attempts], seed=seed, concurrency=128, max_rows=512,
                    progress=progress, reviser=rev, temperature=temperature)
    if r.failed:
        raise RuntimeError(f"{r.failed} of {r.questions} revision chains failed: {r.errors[:3]}")
    out: list[list[Attempt]] = []
    for a in r.answers:
        cands = sorted(a["candidates"], key=lambda c: c["attempt"])
        out.append([Attempt(c["solution"], c["score"], bool(c["correct"])) for c in cands])
    return out


def chain_pass_at_1(chains: Sequence[Sequence[Attempt]]) -> list[float]:
    """pass@1 of attempt 1, 2, ... over chains of equal length (as :func:`loop_chains` returns them)."""
    return [sum(c[k].correct for c in chains) / len(chains) for k in range(len(chains[0]))] if chains else []


def builtin_name(path: Path) -> str:
    """The built-in model a directory is (its default verifier is the one ``auto`` loads), else the path."""
    from ponder.workers.models import BUILTIN

    return next((name for name, d in BUILTIN.items() if d.resolve() == Path(path).resolve()), str(path))


def _dir_digest(model_dir: Path) -> str:
    """A digest of every file of a model directory (weights, prompt format, the calibrations
    beside it), or the path where it is not a directory."""
    d = Path(model_dir)
    if not d.is_dir():
        return str(model_dir)
    h = hashlib.sha256()
    for f in sorted(x for x in d.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(d)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def chains_key(recipe: ReviseRecipe, start: Path, qs: Sequence[arith.Question]) -> dict[str, Any]:
    """What a chains file must match to be reused: both models (every file of each, so their
    calibrations too), the verifier that scores the chains and its judge, the questions, the
    chain length, the seed and the temperature."""
    from ponder.workers.models import BUILTIN
    from ponder.workers.runtime import verifier_spec

    # the spec "auto" resolves to for the first-attempt model, as loop_chains loads it
    verifier = verifier_spec("auto", builtin_name(Path(recipe.first_attempt)))
    judge = verifier.split(":")[1] if verifier.startswith("likelihood:") else None
    return {
        "first_attempt": _dir_digest(Path(recipe.first_attempt)), "reviser": _dir_digest(start),
        "verifier": verifier, "judge": _dir_digest(BUILTIN.get(judge, Path(judge))) if judge else None,
        "questions": hashlib.sha256("\n".join(q.question for q in qs).encode()).hexdigest()[:16],
        "attempts": recipe.samples, "seed": recipe.seed, "temperature": recipe.temperature,
    }


def cached_loop_chains(recipe: ReviseRecipe, start: Path, qs: Sequence[arith.Question]) -> list[list[Attempt]]:
    """The scored context's chains (one per question, :func:`loop_chains`), read from
    ``recipe.chains_file`` when it holds this recipe's chains, else drawn (and written there)."""
    path = Path(recipe.chains_file) if recipe.chains_file else None
    key = chains_key(recipe, start, qs) if path else {}
    if path and path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") != key:
            raise InvalidArgument("chains_file", f"{path} holds the chains of another run ({saved.get('key')}, "
                                  f"this one needs {key}): remove it or name another file")
        log.info("chains read from %s", path)
        return [[Attempt(**a) for a in c] for c in saved["chains"]]
    chains = loop_chains(Path(recipe.first_attempt), start, qs, 1, recipe.samples, seed=recipe.seed,
                         temperature=recipe.temperature)
    if path:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"key": key, "chains": [[asdict(a) for a in c] for c in chains]}))
        tmp.replace(path)
    return chains


def scored_trajectories(
    qs: Sequence[arith.Question], recipe: ReviseRecipe, start: Path
) -> tuple[list[Trajectory], dict[str, Any]]:
    """One revision chain of ``recipe.samples`` attempts per question as a worker runs it
    (:func:`loop_chains`: the policy's first attempt, the starting reviser's revisions, each
    scored by the default verifier); each trajectory holds the chain's first k attempts with
    their scores (k balanced over 1..4) and the question's worked solution as its target."""
    chains = cached_loop_chains(recipe, start, qs)
    rng = random.Random(recipe.seed)
    ks = balanced_ks(len(qs), recipe.per_question, rng)
    trajs: list[Trajectory] = []
    right_in_context = 0
    for q, chain, mine in zip(qs, chains, ks):
        for k in mine:
            kept = chain[: min(k, len(chain))]
            trajs.append(Trajectory(q.question, tuple(a.solution for a in kept), q.solution, tuple(a.score for a in kept)))
            right_in_context += sum(a.correct for a in kept)
    n_right = sum(a.correct for c in chains for a in c)
    stats = {
        "questions": len(qs), "samples_per_question": recipe.samples, "correct_samples": n_right,
        "wrong_samples": sum(len(c) for c in chains) - n_right, "chain_pass_at_1_by_attempt": chain_pass_at_1(chains),
        "questions_always_right": sum(all(a.correct for a in c) for c in chains), "right_in_context": right_in_context,
    }
    return trajs, stats


def plain_examples(tokenizer: Any, fmt: PromptFormat, seed: int) -> Iterator[Example]:
    """Questions without attempts (fresh training-split questions of the policy's own mix) with
    their worked solutions: what keeps the reviser's first attempt as good as the policy."""
    for q in arith.stream("train", seed + 11, arith.TRAIN_MIX):
        yield encode_example(tokenizer, format_prompt(tokenizer, fmt, q.question), q.solution)


def examples(
    tokenizer: Any,
    fmt: PromptFormat,
    trajs: Sequence[Trajectory],
    seed: int,
    plain_share: float = 0.0,
    counts: dict[int, int] | None = None,
) -> Iterator[Example]:
    """Revision trajectories in reshuffled epochs, with a ``plain_share`` of plain examples
    interleaved at random; ``counts[k]`` tallies the examples handed out with ``k`` attempts."""
    encoded = [
        (len(t.attempts), encode_example(tokenizer, format_prompt(tokenizer, fmt, t.question, t.attempts, t.scores), t.target))
        for t in trajs
    ]
    rng = random.Random(seed)
    plain = plain_examples(tokenizer, fmt, seed)

    def epochs() -> Iterator[tuple[int, Example]]:
        while True:
            order = list(range(len(encoded)))
            rng.shuffle(order)
            for i in order:
                yield encoded[i]

    revs = epochs() if encoded else None
    while True:
        if revs is None or rng.random() < plain_share:
            k, ex = 0, next(plain)
        else:
            k, ex = next(revs)
        if counts is not None:
            counts[k] = counts.get(k, 0) + 1
        yield ex


Evaluate = Callable[[Any], list[float]]


def held_out_evaluator(tokenizer: Any, fmt: PromptFormat, recipe: ReviseRecipe) -> Evaluate:
    """pass@1 by attempt of short revision chains on validation questions (same questions and
    seeds at every evaluation, so successive checkpoints are compared on paired samples)."""
    qs = arith.questions("validation", recipe.val_questions, seed=recipe.seed + 5, mix=arith.EVAL_MIX)

    def evaluate(model: Any) -> list[float]:
        res = revision_chains(
            model, tokenizer, fmt, qs, recipe.val_chains, recipe.val_attempts, temperature=recipe.temperature,
            seed=recipe.seed + 300, dtype=torch.bfloat16 if recipe.bf16 else torch.float32,
        )
        return res.pass_at_1_by_step()

    return evaluate


def loop_evaluator(tokenizer: Any, spec: dict[str, Any], recipe: ReviseRecipe, scratch: Path) -> Evaluate:
    """pass@1 by attempt of revision chains on validation questions run as a worker runs them
    (:func:`loop_chains`, the checkpoint saved to ``scratch`` and served by the engine): for a
    reviser that reads the verifier's scores, which only the search loop computes."""
    qs = arith.questions("validation", recipe.val_questions, seed=recipe.seed + 5, mix=arith.EVAL_MIX)

    def evaluate(model: Any) -> list[float]:
        save_checkpoint(model, tokenizer, scratch, spec)
        chains = loop_chains(Path(recipe.first_attempt), scratch, qs, recipe.val_chains, recipe.val_attempts,
                             seed=recipe.seed + 300, temperature=recipe.temperature, progress=False)
        return chain_pass_at_1(chains)

    return evaluate


def fit_with_early_stopping(
    model: Any, batches: Iterator[list[Example]], recipe: ReviseRecipe, evaluate: Evaluate
) -> dict[str, Any]:
    """Train, evaluating every ``eval_every`` steps (and before the first); keep the weights of
    the best held-out score and stop after ``patience`` evaluations without improvement."""
    stopper = EarlyStopping(recipe.patience)
    curve: list[dict[str, Any]] = []
    best: dict[str, torch.Tensor] = {}
    eval_seconds = 0.0

    def record(step: int) -> bool:
        nonlocal best, eval_seconds
        t = time.time()
        was_training = model.training
        model.eval()
        by_step = evaluate(model)
        if was_training:
            model.train()
        eval_seconds += time.time() - t
        score = held_out_score(by_step)
        is_best, stop = stopper.update(step, score)
        if is_best:
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        curve.append({"step": step, "pass_at_1_by_attempt": by_step, "score": score, "seconds": time.time() - t})
        log.info("held-out step %d: pass@1 by attempt %s, score %.4f%s", step, [round(x, 3) for x in by_step],
                 score, " (best)" if is_best else "")
        return stop

    record(0)
    loop = LoopConfig(
        steps=recipe.steps, lr=recipe.lr, warmup=min(recipe.warmup, recipe.steps), min_lr_ratio=0.1, bf16=recipe.bf16
    )

    def on_step(step: int, loss: float) -> bool:
        done = step + 1
        if done % recipe.eval_every == 0 or done == recipe.steps:
            return record(done)
        return False

    fit = train_loop(model, batches, loop, desc="train reviser", on_step=on_step)
    model.load_state_dict(best)
    model.eval()
    return {
        "fit": fit, "curve": curve, "chosen_step": stopper.best_step, "best_score": stopper.best_score,
        "stopped_early": fit["steps_run"] < recipe.steps, "eval_seconds": eval_seconds,
    }


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def earlier_stages(start: Path) -> list[dict[str, Any]]:
    """The training summaries of a starting checkpoint that is itself a reviser (its train.json
    has a revise recipe), earliest first, so a reviser trained in stages records each of them;
    empty for a policy."""
    path = start / "train.json"
    if not path.exists():
        return []
    prev = json.loads(path.read_text())
    if "attempt_view" not in (prev.get("recipe") or {}):
        return []
    return [*prev.get("earlier_stages", []), {k: v for k, v in prev.items() if k != "earlier_stages"}]


def train_reviser(recipe: ReviseRecipe, policy: Path, out: Path, command: str) -> dict[str, Any]:
    if recipe.task != "arith":
        raise InvalidArgument("task", f"unknown task {recipe.task!r}; the built-in task is 'arith'")
    # Trajectories are written in the reviser's own format (the one saved to its ponder.json),
    # whatever the policy checkpoint's file says; a recipe that cannot run is refused before any
    # model loads.
    if recipe.attempt_view not in ATTEMPT_VIEWS:
        raise InvalidArgument("attempt_view", f"must be one of {', '.join(ATTEMPT_VIEWS)}, got {recipe.attempt_view!r}")
    rev_fmt = dataclasses.replace(prompt_format(), attempt_template=ATTEMPT_VIEWS[recipe.attempt_view],
                                  attempt_order=ATTEMPT_ORDER.get(recipe.attempt_view, "chain"))
    spec = {**arith.PromptSpec().ponder_json(), "attempt_template": rev_fmt.attempt_template}
    if rev_fmt.attempt_order != "chain":
        spec["attempt_order"] = rev_fmt.attempt_order
    if recipe.chains_file and recipe.context != "scored":
        raise InvalidArgument("chains_file", "--chains-file holds the chains --context scored draws; this run draws none")
    if rev_fmt.reads_scores and recipe.context != "scored":
        raise InvalidArgument("attempt_view", "a scored view needs attempts with their scores: --context scored")
    torch.set_num_threads(recipe.threads)
    started = time.time()
    load_start = _loadavg()
    model, tokenizer, fmt = load_checkpoint(policy)
    earlier = earlier_stages(policy)  # read now: --out may be the starting checkpoint's directory
    if recipe.context == "chain" and fmt.attempt_template != rev_fmt.attempt_template:
        raise InvalidArgument(
            "context", f"--context chain runs the starting model's own revision chains: start from a reviser "
            f"with --attempt-view {recipe.attempt_view} (e.g. --policy {DEFAULT_OUT}), not {policy}",
        )
    trajs, stats = sample_trajectories(model, tokenizer, fmt, recipe, stage=len(earlier), start=policy)
    sample_seconds = time.time() - started
    # Revision prompts carry up to 4 earlier attempts (~1,300 characters at most on the
    # eval mix), past the policy's 1,024; RoPE has no learned positions, so only the bound moves.
    model.config.max_position_embeddings = max(int(model.config.max_position_embeddings), 2048)
    counts: dict[int, int] = {}
    batches = bucketed(
        examples(tokenizer, rev_fmt, trajs, recipe.seed, recipe.plain_share, counts), recipe.batch, seed=recipe.seed
    )
    torch.manual_seed(recipe.seed)
    with tempfile.TemporaryDirectory(prefix="ponder-revise-") as scratch:
        # a reviser that reads scores is scored on held-out chains through the search loop (only
        # it computes them); the others on plain batched chains, as before
        evaluate = (loop_evaluator(tokenizer, spec, recipe, Path(scratch)) if rev_fmt.reads_scores
                    else held_out_evaluator(tokenizer, rev_fmt, recipe))
        result = fit_with_early_stopping(model, batches, recipe, evaluate)
    summary = {
        "recipe": asdict(recipe), "command": command, "policy": str(policy), "data": stats,
        # Examples drawn into batches by attempts in context (the bucketer reads ahead by up to
        # 16 batches, so a few more than were trained on).
        "examples_drawn_by_attempts": {k: counts.get(k, 0) for k in range(MAX_WRONG + 1)},
        "train": result["fit"], "held_out": {
            "questions": recipe.val_questions, "chains": recipe.val_chains, "attempts": recipe.val_attempts,
            "score": "mean pass@1 over the attempts", "curve": result["curve"],
        },
        "chosen_step": result["chosen_step"], "best_score": result["best_score"],
        "stopped_early": result["stopped_early"],
        "sample_seconds": sample_seconds, "eval_seconds": result["eval_seconds"],
        "wall_seconds": time.time() - started,
        "load_average_start": load_start, "load_average": _loadavg(),
    }
    if earlier:  # started from a reviser: its own training, stage by stage, comes with this one
        summary["earlier_stages"] = earlier
    files = save_checkpoint(model, tokenizer, out, spec, summary)
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
    p.add_argument("--context", choices=CONTEXTS, default=d.context)
    p.add_argument("--first-attempt", default=d.first_attempt,
                   help="--context scored: the model writing each chain's first attempt (as on a worker)")
    p.add_argument("--chains-file", default=d.chains_file,
                   help="--context scored: reuse the chains saved in this JSON file, or draw and save them there")
    p.add_argument("--order", choices=ORDERS, default=d.order)
    p.add_argument("--attempt-view", choices=tuple(ATTEMPT_VIEWS), default=d.attempt_view,
                   help="how earlier attempts appear in the reviser's prompt (saved to its ponder.json)")
    p.add_argument("--per-question", type=int, default=d.per_question)
    p.add_argument("--plain-share", type=float, default=d.plain_share)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=d.bf16)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--val-questions", type=int, default=d.val_questions)
    p.add_argument("--val-chains", type=int, default=d.val_chains)
    p.add_argument("--val-attempts", type=int, default=d.val_attempts)
    p.add_argument("--threads", type=int, default=d.threads)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser().parse_args(argv)
    if min(a.questions, a.samples, a.steps, a.batch, a.per_question, a.eval_every, a.patience) < 1:
        raise InvalidArgument("questions", "questions, samples, steps, batch, per-question, eval-every and patience must be >= 1")
    if min(a.val_questions, a.val_chains, a.val_attempts) < 1:
        raise InvalidArgument("val_questions", "val-questions, val-chains and val-attempts must be >= 1")
    if not 0.0 <= a.plain_share < 1.0:
        raise InvalidArgument("plain_share", "plain-share must be in [0, 1)")
    fields = ReviseRecipe.__dataclass_fields__
    recipe = ReviseRecipe(**{k: getattr(a, k) for k in fields})
    s = train_reviser(recipe, a.policy, a.out, "ponder train revise " + " ".join(argv))
    print(json.dumps({
        "out": str(a.out), "trajectories": s["data"]["trajectories"], "chosen_step": s["chosen_step"],
        "best_score": round(s["best_score"], 4), "seconds": round(s["wall_seconds"], 1),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
