"""The arith eval job, engine against transformers, both sides in one run.

The job is exactly ``ponder eval --model arith --dataset arith:test:16 --strategies best_of_n
--budgets 16 --concurrency 16 --max-rows 256 --verifier confidence --backend engine|hf`` (16
questions x 16 samples, 256 rows in flight, the policy's calibrated confidence as verifier, the plan
fitted for it, seed 0): the same
:func:`ponder.evaluation.evaluate.evaluate` call once with the engine policy ("engine": ponder's
paged-KV engine) and once with the transformers policy ("hf": HFPolicy over transformers).
Each side first runs one question untimed (lazy initialisation out of the measurement).
The verifier is ``confidence`` by default, not arith's default ``likelihood:arith-large``: the
job measures the policy's backend, and the judge's forward (the same transformers code on both
sides) would be most of either side's time (``--verifier`` takes any spec).

Reports which decode attention the engine used (``cpu_attention``: "fused-cpp", the C++
kernel of ``workers/engine/cpu_attention_fused.cpp``, or "torch"; ``PONDER_CPU_ATTENTION=torch``
selects the latter), each side's wall time, answers and decoded tokens/s; ``speedup`` (hf wall / engine
wall, the one ratio of the two sides); how many questions' answers differ between the sides
(0 expected: same seeds, hidden states equal to ~1e-5); and the engine's decoded tokens/s
as a share of the GEMM-bound limit (``gemm_fraction``: the time one decode step's GEMMs alone
take for the same number of rows, measured here on this model's weights). ``--profile``
also prints the engine side's cProfile (top functions by own time).

Prints a table and, last, one JSON line. ``--quick``: 4 questions x 8 samples (< 1 minute).
Usage: python benchmarks/arith_engine.py [--quick] [--json] [--threads 1] [--dtype auto] [--verifier V] [--profile N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="arith_engine", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="arith")
    ap.add_argument("--quick", action="store_true", help="4 questions x 8 samples, a smoke run")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--questions", type=int, default=None, help="arith:test:N [16]")
    ap.add_argument("--budget", type=int, default=None, help="best_of_n samples per question [16]")
    ap.add_argument("--concurrency", type=int, default=None, help="questions in flight [16]")
    ap.add_argument("--max-rows", type=int, default=None, help="sequences in flight [256]")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the eval's auto for arith: 1)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="the engine's dtype; auto (default) as `ponder eval` picks it: bfloat16 on a CPU with "
                         "native bf16, else float32. Transformers runs float32 (its auto on the CPU)")
    ap.add_argument("--verifier", default="confidence",
                    help="verifier of both sides (default confidence: no model call of its own, so the job times "
                         "the policy's backend; 'auto' adds arith's judge, the same transformers forward on both sides)")
    ap.add_argument("--skip-hf", action="store_true", help="run only the engine (no speedup)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="profile the engine side with cProfile and print its top N functions "
                         "(with PONDER_PROFILE_OUT=FILE set, also dump the stats to FILE for pstats)")
    args = ap.parse_args(argv)
    full = dict(questions=16, budget=16, concurrency=16, max_rows=256)
    quick = dict(questions=4, budget=8, concurrency=4, max_rows=32)
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def gemm_limit(policy: Any, rows: int, seconds: float = 1.0) -> float:
    """Tokens/s if a decode step were its GEMMs only: every layer's four fused products and
    the LM head on ``rows`` rows of this model's weights, timed on this machine."""
    import torch.nn.functional as F

    m = policy.engine.model
    x = torch.randn(rows, m.hidden_size, dtype=m.dtype)
    mats = [w for lw in m.layers for w in (lw.wqkv, lw.wo, lw.wgu, lw.wdown)] + [m.lm_head]
    ins = [torch.randn(rows, w.shape[1], dtype=m.dtype) for w in mats]
    del x

    def step() -> None:
        for a, w in zip(ins, mats):
            F.linear(a, w)

    for _ in range(3):
        step()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        reps += 1
    return rows * reps / (time.perf_counter() - t0)


def run_side(policy: Any, verifier: Any, plan: Any, args: argparse.Namespace, profile: int = 0) -> dict[str, Any]:
    from ponder.evaluation.evaluate import evaluate, load_dataset

    items = load_dataset(f"arith:test:{args.questions}")
    common = dict(seed=0, progress=False, plan=plan)
    # untimed warm-up: one question at a small budget
    evaluate(policy, verifier, items[:1], ["best_of_n"], [2], concurrency=1, max_rows=2, **common)  # type: ignore[arg-type]
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    (res,) = evaluate(policy, verifier, items, ["best_of_n"], [args.budget], concurrency=args.concurrency,
                      max_rows=args.max_rows, **common)  # type: ignore[arg-type]
    wall = time.perf_counter() - t0
    if prof is not None:
        import io
        import pstats

        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(profile)
        if os.environ.get("PONDER_PROFILE_OUT"):
            prof.dump_stats(os.environ["PONDER_PROFILE_OUT"])
        print(buf.getvalue(), file=sys.stderr)
    decoded = res.decode_tokens * (res.questions - res.failed)  # Result keeps means per question
    return {
        "wall_s": wall,
        "correct": res.correct,
        "questions": res.questions,
        "failed": res.failed,
        "decode_tokens": int(round(decoded)),
        "decode_tok_s": decoded / wall,
        "answers": [a.get("answer") for a in res.answers],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    from ponder.workers.runtime import build_plan, build_policy, build_verifier

    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    res: dict[str, Any] = {
        "bench": "arith_engine",
        "model": args.model,
        "job": (f"ponder eval --model {args.model} --dataset arith:test:{args.questions} --strategies best_of_n "
                f"--budgets {args.budget} --concurrency {args.concurrency} --max-rows {args.max_rows} "
                f"--verifier {args.verifier} --backend engine|hf"),
        "sides": "engine = ponder's paged-KV engine (EnginePolicy); hf = transformers (HFPolicy)",
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        # The machine is shared: the load average says how much the figures were disturbed.
        "loadavg_start": list(os.getloadavg()),
    }
    sides = ["engine"] if args.skip_hf else ["engine", "hf"]
    for side in sides:
        say(f"{side}: loading {args.model} ...")
        policy = build_policy(args.model, side, "cpu", args.dtype if side == "engine" else "float32")
        verifier = build_verifier(args.verifier, policy, args.model)
        plan = build_plan("auto", args.model, verifier)
        res["dtype" if side == "engine" else "hf_dtype"] = policy.dtype
        if side == "engine":
            res["non_embedding_params"] = policy.n_params
            # which decode attention the engine runs: the fused C++ kernel or the torch ops
            # (PONDER_CPU_ATTENTION=torch, a failed build, or a dtype other than float32/bfloat16)
            from ponder.workers.engine import cpu_fused

            t0 = time.perf_counter()
            res["cpu_attention"] = cpu_fused.name() if getattr(torch, policy.dtype) in cpu_fused.DTYPES else "torch"
            res["cpu_attention_load_s"] = time.perf_counter() - t0  # a compile on a cold cache
            say(f"engine: decode attention {res['cpu_attention']} (ready in {res['cpu_attention_load_s']:.1f} s)")
        say(f"{side}: running the job ...")
        out = run_side(policy, verifier, plan, args, args.profile if side == "engine" else 0)
        say(f"{side}: {out['wall_s']:.1f} s, {out['correct']}/{out['questions']} correct, "
            f"{out['decode_tok_s']:.0f} decoded tok/s")
        if side == "engine":
            res["gemm_limit_tok_s"] = gemm_limit(policy, args.max_rows, 0.3 if args.quick else 1.0)
        res[side] = out
        del policy, verifier, plan
    e = res["engine"]
    res["gemm_fraction"] = e["decode_tok_s"] / res["gemm_limit_tok_s"]
    if "hf" in res:
        h = res["hf"]
        res["speedup"] = h["wall_s"] / e["wall_s"]
        res["answers_differing"] = sum(a != b for a, b in zip(e["answers"], h["answers"]))
    res["loadavg_end"] = list(os.getloadavg())
    if not args.json:
        print_table(res)
    print(json.dumps(res))
    return 0


def print_table(r: dict[str, Any]) -> None:
    rows = [("side", "wall s", "correct", "decoded tok/s")]
    for side in ("engine", "hf"):
        if side in r:
            s = r[side]
            rows.append((side, f"{s['wall_s']:.2f}", f"{s['correct']}/{s['questions']}", f"{s['decode_tok_s']:.0f}"))
    widths = [max(len(x[i]) for x in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    if "speedup" in r:
        print(f"speedup (hf wall / engine wall): {r['speedup']:.2f}x; answers differing: {r['answers_differing']}")
    print(f"engine decoded tok/s / GEMM-bound limit ({r['gemm_limit_tok_s']:.0f} tok/s at {r.get('job')}): "
          f"{r['gemm_fraction']:.3f}")
    print(f"threads {r['threads']}, dtype {r.get('dtype')} (transformers {r.get('hf_dtype')}), cpu attention {r.get('cpu_attention')}, load average {r['loadavg_start'][0]:.2f} -> "
          f"{r['loadavg_end'][0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
