"""``ponder train vote``: fit a verifier's vote power on held-out questions and save it in the
verifier's calibration.

Weighted best-of-N votes for each distinct answer with its samples' scores. Summing calibrated
probabilities lets a crowd of doubtful wrong samples outvote one confident right one; raising
each score to a power k first (the vote counts ``score ** k``) moves weighted voting from
majority voting (k -> 0) towards keeping the single best-scored sample (k -> inf). k is chosen
here: best-of-``budget`` accuracy of each k on a pool of samples (one ``ponder eval --out`` run
of best-of-N, resampled ``draws`` times per question with the same draws for every k), the best
k kept (ties to the smaller). Every k's accuracy, with majority and best-scored beside it, is
saved in the calibration's ``fit.vote_power``; the worker, ``ponder eval``, the plan fitter and
the scaling benchmark all count weighted votes with the saved power.

    ponder train vote --model arith --verifier likelihood:arith-large --dataset arith:validation:200:11
    ponder train vote --model arith --verifier likelihood:arith-large --pool pool.json   # no sampling

Use questions the calibration was not judged on (a validation split), never the test split.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ponder.evaluation.curves import pool_curve
from ponder.proto.errors import InvalidArgument
from ponder.workers.answers import check_vote_power
from ponder.workers.models import BUILTIN
from ponder.workers.runtime import DEFAULT_MODEL

log = logging.getLogger(__name__)
POWERS = (1.0, 2.0, 4.0, 8.0, 16.0)


def pool_of(data: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The records of the largest best-of-N group of a ``ponder eval --out`` file whose
    candidates all carry a verifier score (errors and unscored questions left out)."""
    groups = [r for r in data.get("results", []) if r.get("strategy") == "best_of_n"]
    if not groups:
        raise InvalidArgument("pool", f"{where} holds no best_of_n group (ponder eval --strategies best_of_n --out ...)")
    group = max(groups, key=lambda r: r["budget"])
    pool = [rec for rec in group["answers"]
            if "error" not in rec and len(rec.get("candidates") or []) >= 2
            and all(c.get("score") is not None for c in rec["candidates"])]
    if len(pool) < 10:
        raise InvalidArgument("pool", f"{where} has {len(pool)} questions with scored samples; at least 10 are needed")
    return pool


def choose(
    pool: Sequence[dict[str, Any]], budget: int, powers: Sequence[float], draws: int, seed: int
) -> dict[str, Any]:
    """Each power's best-of-``budget`` accuracy (every rule on the same draws), majority and the
    best-scored sample beside them, and the chosen power (the most accurate; ties to the smaller)."""
    def curve(selection: str, power: float = 1.0) -> float:
        return float(pool_curve(pool, [budget], draws, random.Random(seed), selection, power)[:, 0].mean())

    by_power = {f"{k:g}": curve("weighted", k) for k in powers}
    best_k = min(powers, key=lambda k: (-round(by_power[f"{k:g}"], 9), k))
    return {
        "power": best_k, "budget": budget, "draws": draws, "seed": seed, "questions": len(pool),
        "samples_per_question": min(len(r["candidates"]) for r in pool),
        "accuracy": by_power, "majority": curve("majority"), "best": curve("best"),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ponder train vote", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="the policy the verifier scores: arith or an HF model directory")
    p.add_argument("--verifier", default="auto", help="a calibrated verifier (confidence or likelihood:JUDGE); "
                   "auto: the model's own")
    p.add_argument("--dataset", default="arith:validation:200:11", help="held-out questions to draw the pool on")
    p.add_argument("--samples", type=int, default=32, help="samples per question when drawing the pool")
    p.add_argument("--budget", type=int, default=16, help="the best-of-N budget the power is chosen at")
    p.add_argument("--powers", default=",".join(f"{k:g}" for k in POWERS), help="the powers tried")
    p.add_argument("--draws", type=int, default=64, help="random draws of N samples per question")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool", type=Path, default=None, help="a `ponder eval --out` best-of-N pool (default: draw one)")
    return p


def _draw(a: argparse.Namespace, work: Path) -> Path:
    from ponder.evaluation import evaluate

    out = work / "vote-pool.json"
    cmd = ["--model", a.model, "--verifier", a.verifier, "--dataset", a.dataset, "--seed", str(a.seed),
           "--strategies", "best_of_n", "--budgets", str(a.samples), "--plan", "default", "--out", str(out)]
    if evaluate.main(cmd) != 0:
        raise InvalidArgument("pool", f"drawing samples failed: ponder eval {' '.join(cmd)}")
    return out


def main(argv: list[str] | None = None) -> int:
    from ponder.workers.runtime import build_policy, build_verifier, verifier_spec

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser().parse_args(argv)
    try:
        powers = sorted({check_vote_power(float(x), "powers") for x in a.powers.split(",") if x.strip()})
    except ValueError:
        raise InvalidArgument("powers", f"must be comma-separated numbers, got {a.powers!r}") from None
    if not powers:
        raise InvalidArgument("powers", "name at least one power")
    if a.budget < 2:
        raise InvalidArgument("budget", f"a vote needs at least 2 samples, got {a.budget}")
    if a.pool is None and a.samples < a.budget:
        raise InvalidArgument("samples", f"drawing {a.samples} samples per question cannot give best-of-{a.budget}")
    a.verifier = verifier_spec(a.verifier, a.model)
    started = time.time()
    policy = build_policy(a.model)
    verifier = build_verifier(a.verifier, policy, a.model)
    cal = getattr(verifier, "calibration", None)
    path = getattr(verifier, "calibration_file", None)
    if verifier is None or cal is None or path is None:
        raise InvalidArgument("verifier", f"{a.verifier!r} has no calibration file to save a vote power in "
                                          "(fit one with `ponder train confidence` or `ponder train likelihood`)")
    model_name = policy.name
    del policy
    drawn = a.pool is None
    if drawn:
        # a scratch folder, never beside the calibration (a committed model's folder), removed
        # once read: the reproduce command draws the same pool again
        with tempfile.TemporaryDirectory(prefix="ponder-vote-") as scratch:
            data = json.loads(_draw(a, Path(scratch)).read_text())
    else:
        data = json.loads(Path(a.pool).read_text())
    source = "the pool drawn here" if drawn else str(a.pool)
    for key, want in (("model", model_name), ("verifier", verifier.name)):
        if data.get(key) != want:
            raise InvalidArgument("pool", f"{source} was drawn with {key} {data.get(key)!r}, not {want!r}")
    pool = pool_of(data, source)
    if min(len(r["candidates"]) for r in pool) < a.budget:
        raise InvalidArgument("budget", f"{source} has {min(len(r['candidates']) for r in pool)} samples per question; "
                                        f"best-of-{a.budget} needs as many")
    result = choose(pool, a.budget, powers, a.draws, a.seed)
    result |= {"command": "ponder train vote " + " ".join(argv), "reproduce": reproduce_command(a, data),
               "pool": None if drawn else source, "dataset": data.get("dataset"), "seconds": round(time.time() - started, 1),
               # drawing the pool (ponder eval) took this long, whether here or before (--pool)
               "pool_seconds": round(float(data.get("total_wall_s", 0.0)), 1),
               "load_average": [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]}
    fitted = replace(cal, vote_power=result["power"], fit={**cal.fit, "vote_power": result})
    fitted.save(path)
    log.info("vote power %g at best-of-%d on %d questions: %s (majority %.3f, best-scored %.3f) -> %s",
             result["power"], a.budget, len(pool), ", ".join(f"k={k} {v:.3f}" for k, v in result["accuracy"].items()),
             result["majority"], result["best"], path)
    record_in_manifest(a.model, Path(path), result["reproduce"])
    print(json.dumps({"calibration": str(path), **{k: result[k] for k in ("power", "budget", "questions", "accuracy",
                                                                         "majority", "best", "seconds")}}))
    return 0


def reproduce_command(a: argparse.Namespace, pool: dict[str, Any]) -> str:
    """The command that draws the same pool (the one read, when ``--pool`` named it) and fits the
    same power."""
    samples = max((r["budget"] for r in pool.get("results", []) if r.get("strategy") == "best_of_n"), default=a.samples)
    return (f"ponder train vote --model {a.model} --verifier {a.verifier} --dataset {pool.get('dataset', a.dataset)} "
            f"--samples {samples} --seed {pool.get('seed', a.seed)} --budget {a.budget} --powers {a.powers} --draws {a.draws}")


def record_in_manifest(model: str, path: Path, command: str) -> None:
    """A committed model's calibration changed: its manifest entry gets the new hash, and its
    command the vote fit after the calibration's own (so one line reproduces the file)."""
    if model not in BUILTIN:
        return
    from ponder.training import manifest

    out = path.resolve()
    root = out.parents[1]
    index = root / manifest.MANIFEST
    if not index.exists() or not out.is_relative_to(root):
        return
    rel = str(out.relative_to(root))
    components = json.loads(index.read_text()).get("components", {})
    name, entry = next(((n, e) for n, e in components.items() if rel in e.get("files", {})), (None, None))
    if name is None or entry is None:
        log.warning("%s is not in %s: its vote power is saved, not recorded", rel, index)
        return
    first = entry["command"].split(" && ponder train vote ")[0]
    manifest.update(root, name, [root / f for f in entry["files"]], f"{first} && {command}")


def vote_summary(fit: dict[str, Any]) -> str:
    """One line for docs: the vote power and what it was chosen on."""
    v = fit.get("vote_power")
    if not v:
        return "vote power 1 (not fitted: weighted votes sum the scores)"
    acc = ", ".join(f"k={k}: {x:.3f}" for k, x in sorted(v["accuracy"].items(), key=lambda kv: float(kv[0])))
    return (f"vote power {v['power']:g}, chosen at best-of-{v['budget']} on {v['questions']} questions of "
            f"`{v.get('dataset')}` × {v['samples_per_question']} samples ({acc}; majority {v['majority']:.3f}, "
            f"best-scored {v['best']:.3f})")


if __name__ == "__main__":
    raise SystemExit(main())

