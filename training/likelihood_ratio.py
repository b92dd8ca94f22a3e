"""An exploration for the verifier (measured 2026-12-03, docs/quality.md): does a larger model's
likelihood of the policy's samples rank the samples of one question better than the policy's own
confidence? Samples ``--samples`` solutions of ``--questions`` arith test questions with the
policy (T = 0.8), rescores every solution with ``--policy`` and ``--large`` (one forward pass
each, fp32) and prints the within-question AUC of each score:

    python -m ponder.training.likelihood_ratio --questions 96 --samples 16

- own: the log-probabilities the engine recorded while sampling (what the confidence verifier reads);
- policy / large: the models' log-probabilities of the same tokens at T = 1 (and at T = 0.8);
- large − policy: their difference per token, averaged (a likelihood ratio).

Nothing here is a verifier the service can use yet; it is the measurement behind a next step.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ponder.tasks import arith
from ponder.training.calibration import sample_paths
from ponder.training.report import within_question_auc
from ponder.workers.models import load_hf_model, resolve
from ponder.workers.runtime import build_policy
from ponder.workers.types import SamplingParams


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(prog="python -m ponder.training.likelihood_ratio", description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="arith")
    ap.add_argument("--large", default="arith-large")
    ap.add_argument("--questions", type=int, default=96)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    started = time.time()
    policy = build_policy(a.policy)
    qs = arith.questions("test", a.questions, seed=1234)
    samples = sample_paths(policy, [q.question for q in qs], [q.answer for q in qs], a.samples,
                           SamplingParams(temperature=0.8), seed=a.seed)
    models = {"policy": load_hf_model(resolve(a.policy)).eval(), "large": load_hf_model(resolve(a.large)).eval()}
    feats: dict[str, list[list[float]]] = {}  # score name -> per question, per sample
    correct: list[list[bool]] = [[] for _ in qs]
    with torch.inference_mode():
        for s in samples:
            root = s.steps[0].parent  # the path starts at the first step; its parent holds the prompt
            assert root is not None
            prompt = root.token_ids
            sol = [t for st in s.steps for t in st.token_ids]
            own = [lp for st in s.steps for lp in st.logprobs]
            ids = torch.tensor([prompt + sol])
            idx = torch.tensor(sol)[:, None]
            lp: dict[str, torch.Tensor] = {}
            for name, m in models.items():
                logits = m(ids).logits[0, len(prompt) - 1:-1].float()
                lp[name] = torch.log_softmax(logits, -1).gather(1, idx)[:, 0]
                lp[name + " T0.8"] = torch.log_softmax(logits / 0.8, -1).gather(1, idx)[:, 0]
            ratio = lp["large"] - lp["policy"]
            row = {
                "own mean": sum(own) / max(1, len(own)), "own min": min(own) if own else 0.0,
                "policy mean": lp["policy"].mean().item(), "policy min": lp["policy"].min().item(),
                "large mean": lp["large"].mean().item(), "large min": lp["large"].min().item(),
                "policy T0.8 mean": lp["policy T0.8"].mean().item(), "large T0.8 mean": lp["large T0.8"].mean().item(),
                "large - policy mean": ratio.mean().item(), "large - policy min": ratio.min().item(),
                "large - policy T0.8 mean": (lp["large T0.8"] - lp["policy T0.8"]).mean().item(),
            }
            for k, v in row.items():
                feats.setdefault(k, [[] for _ in qs])[s.question].append(v)
            correct[s.question].append(s.correct)
    ones: list[list[list[float] | None]] = [[[1.0]] * len(r) for r in correct]  # unparsable samples count as wrong
    out = {k: round(within_question_auc(v, correct, ones), 3) for k, v in feats.items()}
    summary = {"questions": a.questions, "samples": a.samples,
               "pass_at_1": round(sum(map(sum, correct)) / max(1, sum(map(len, correct))), 3),
               "within_question_auc": out, "wall_s": round(time.time() - started, 1)}
    print(json.dumps(summary))
    return out


if __name__ == "__main__":
    main()
