"""Engine benchmark: our paged-KV engine against plain transformers on the same jobs, one run.

(a) sampling: one question, S samples of T new tokens each (EOS masked on both sides so every
    sample has exactly T tokens): the engine (prompt prefilled once, S forks, one batch)
    against ``model.generate(num_return_sequences=S)``; tokens/s of each and the ratio.
(b) tree: PRM-guided beam search (N beams, width M, K steps) through SearchLoop, once with
    EnginePolicy and once with HFPolicy (which re-encodes each expanded prefix), same seed and
    the same verifier (a fixed random linear probe of the step-end hidden state); decoded
    tokens/s of each and the ratio.
(c) KV memory: bytes of KV blocks held by N beams forked from a P-token prompt after each
    decoded one token (copy-on-write done), against N unshared caches of P+1 tokens.
(d) the machine's limit: measured GEMM GFLOP/s (in --dtype), the GEMM-bound tokens/s it implies
    (GFLOP/s ÷ 2·P per token, P = non-embedding parameters), and our sampling tokens/s as a
    fraction of it.

Before (a) and (b) are timed, each side runs the same job untimed with the same rows but only
``--warmup-tokens`` tokens (and one search step): Triton compiles the engine's kernels, and
both sides' first-call costs fall there, not in the first timed run; on CUDA every timed region
is bracketed by device syncs.

Prints a table and, last, one JSON line. ``--quick`` shrinks every size for a smoke run.
Usage: python benchmarks/engine.py [--quick] [--json] [--model smollm2|DIR|FILE.gguf]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from ponder.workers.types import Node, Prompt, ScoreOutput
from ponder.workers.verifier import Verifier, aggregate

QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
TARGETS = {"sampling_ratio": 5.0, "tree_ratio": 5.0, "kv_fraction": 0.25, "gemm_fraction": 0.40}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="ponder bench engine", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", help="smollm2, a model directory or a .gguf file")
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--samples", type=int, default=None, help="(a) samples [64]")
    ap.add_argument("--new-tokens", type=int, default=None, help="(a) new tokens per sample [256]")
    ap.add_argument("--beams", type=int, default=None, help="(b, c) beams N [64]")
    ap.add_argument("--width", type=int, default=None, help="(b) beam width M [4]")
    ap.add_argument("--steps", type=int, default=None, help="(b) search steps [8]")
    ap.add_argument("--step-tokens", type=int, default=None, help="(b) token cap per step [64]")
    ap.add_argument("--kv-prompt", type=int, default=None, help="(c) shared prompt tokens [200]")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="weights/activations of our side and of the GEMM probe, and of transformers' side "
                         "unless --hf-dtype names another. auto (default): each side in its fastest dtype, "
                         "as a worker's --dtype auto picks it: ours bfloat16 on CUDA and on a CPU with native "
                         "bf16, else float32; transformers float32 on the CPU, bfloat16 on CUDA")
    ap.add_argument("--hf-dtype", default="", choices=["", "float32", "bfloat16", "float16"],
                    help="transformers' dtype when it differs from --dtype; default: as --dtype (auto: float32 "
                         "on the CPU, bfloat16 on CUDA)")
    ap.add_argument("--device", default="cpu", help="where both sides run: cpu, cuda, cuda:N")
    ap.add_argument("--skip-hf", action="store_true", help="run only our side (no ratios)")
    ap.add_argument("--warmup-tokens", type=int, default=2,
                    help="tokens per sample (and per step, one step) of the untimed warm-up run of each side "
                         "before (a) and (b); 0: no warm-up [2]")
    args = ap.parse_args(argv)
    full = dict(samples=64, new_tokens=256, beams=64, width=4, steps=8, step_tokens=64, kv_prompt=200)
    quick = dict(samples=8, new_tokens=16, beams=8, width=2, steps=2, step_tokens=8, kv_prompt=40)
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.warmup_tokens < 0:
        ap.error("--warmup-tokens must be >= 0")
    return args


def warmup_args(args: argparse.Namespace) -> argparse.Namespace:
    """The warm-up's job: the timed jobs' rows (samples, beams, width: the same batch shapes, so
    the same kernel specialisations) but ``--warmup-tokens`` tokens and one search step."""
    return argparse.Namespace(**{**vars(args), "new_tokens": args.warmup_tokens, "steps": 1,
                                 "step_tokens": args.warmup_tokens})


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work (a no-op on the CPU), so a timer measures the work itself."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def gemm_gflops(seconds: float = 1.5, dtype: torch.dtype = torch.float32, device: str = "cpu") -> dict[str, float]:
    """GEMM throughput: a large square product (the machine's peak) and a decode-shaped one
    (64 rows through a 576×1536 MLP matrix, SmolLM2's shape). Products are timed one at a time on
    the CPU, where a dtype it only emulates (bf16 without avx512_bf16: a minute for one 2048³
    product on a 2-core AMD EPYC) must not multiply into a fixed count; the square side is halved
    until one product fits ``seconds``. On a GPU they are timed in batches of 10 between syncs."""
    out = {}
    batch = 10 if torch.device(device).type == "cuda" else 1
    side = 2048
    while side > 256:  # the largest square whose single product fits the time (probed at a quarter size)
        a = torch.randn(side // 4, side // 4).to(device, dtype)
        a @ a  # untimed: a first product pays one-time start-up (cuBLAS, thread pools)
        sync(device)
        t0 = time.perf_counter()
        a @ a
        sync(device)
        if (time.perf_counter() - t0) * 64 <= seconds:
            break
        side //= 2
    for name, (m, k, n) in {f"square_{side}": (side, side, side), "decode_64x576x1536": (64, 576, 1536)}.items():
        a, b = torch.randn(m, k).to(device, dtype), torch.randn(k, n).to(device, dtype)
        a @ b
        sync(device)
        reps, t0 = 0, time.perf_counter()
        while reps == 0 or time.perf_counter() - t0 < seconds:
            for _ in range(batch):
                a @ b
            reps += batch
            sync(device)
        out[name] = 2.0 * m * k * n * reps / (time.perf_counter() - t0) / 1e9
    return out


class ProbeVerifier(Verifier):
    """A fixed random linear probe of the step-end hidden state: a deterministic stand-in for a
    value head, identical for both backends (their hidden states agree to ~1e-5)."""

    name = "probe"

    def __init__(self, hidden_size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(hidden_size, generator=g) / math.sqrt(hidden_size)
        self.n_params = hidden_size

    def score(self, nodes: list[Node], aggregation: str) -> ScoreOutput:
        scores = [float(torch.sigmoid(n.hidden.float() @ self.w.to(n.hidden.device))) if n.hidden is not None else 0.5
                  for n in nodes]
        aggs = [aggregate(n.aggregate, n.n_scored, s, aggregation) for n, s in zip(nodes, scores)]
        return ScoreOutput(scores=scores, aggregates=aggs, flops=2.0 * self.n_params * len(nodes))


def run_sampling_engine(policy: Any, ids: list[int], args: argparse.Namespace) -> tuple[float, int]:
    from ponder.workers.engine.decode import StepRow, StopRule, run_steps
    from ponder.workers.sampling import RowRandom
    from ponder.workers.types import SamplingParams

    eng = policy.engine
    params = SamplingParams(temperature=args.temperature, max_step_tokens=args.new_tokens)
    eng.pool.clear_cache()  # a cold prefix index: the prompt is computed in the timed run
    sync(args.device)
    t0 = time.perf_counter()
    root = eng.prefill(ids).seq
    rows = [StepRow(eng.fork(root), params, RowRandom(args.seed + i)) for i in range(args.samples)]
    run_steps(eng, rows, StopRule(policy.eos, None, suppress_eos=True))
    sync(args.device)
    dt = time.perf_counter() - t0
    tokens = sum(len(r.tokens) for r in rows)
    for r in rows:
        eng.release(r.seq)
    eng.release(root)
    return dt, tokens


@torch.inference_mode()
def run_sampling_hf(model: Any, tokenizer: Any, ids: list[int], args: argparse.Namespace) -> tuple[float, int]:
    torch.manual_seed(args.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dev = next(model.parameters()).device
    sync(dev)
    t0 = time.perf_counter()
    out = model.generate(
        torch.tensor([ids], device=dev), attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=dev),
        do_sample=True, temperature=args.temperature, top_k=0, top_p=1.0,
        num_return_sequences=args.samples, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
        pad_token_id=pad,
    )
    sync(dev)
    dt = time.perf_counter() - t0
    return dt, int(out.shape[0] * (out.shape[1] - len(ids)))


def run_tree(policy: Any, verifier: Any, args: argparse.Namespace) -> tuple[float, dict[str, float]]:
    from ponder.proto.config import SolveConfig
    from ponder.workers.loop import SearchLoop

    if hasattr(policy, "engine"):
        policy.engine.pool.clear_cache()  # nothing left over from the sampling job
    events: list[Any] = []
    loop = SearchLoop(policy, verifier, sink=lambda _j, evs: events.extend(evs))
    cfg = SolveConfig(
        question=QUESTION, strategy="beam", generations=args.beams, beam_width=args.width,
        max_steps=args.steps, max_step_tokens=args.step_tokens, seed=args.seed, temperature=args.temperature,
    ).validate()
    sync(args.device)
    t0 = time.perf_counter()
    loop.submit("bench", cfg)
    loop.run_until_idle()
    sync(args.device)
    dt = time.perf_counter() - t0
    final = [e.final for e in events if e.HasField("final")]
    errors = [e.error.message for e in events if e.HasField("error")]
    if not final:
        raise RuntimeError(f"tree job failed: {errors}")
    u = final[0].usage
    return dt, {"decode_tokens": u.decode_tokens, "prompt_tokens": u.prompt_tokens, "steps": u.steps}


def kv_memory(policy: Any, tokenizer: Any, args: argparse.Namespace) -> dict[str, float]:
    """KV bytes for N beams forked from a P-token prompt, each with one decoded token."""
    eng = policy.engine
    text = (QUESTION + " ") * (1 + args.kv_prompt // 8)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])[: args.kv_prompt]
    assert len(ids) == args.kv_prompt, "the filler text is too short for --kv-prompt"
    before = eng.stats().referenced_blocks
    root = eng.prefill(ids, use_index=False).seq
    beams = [eng.fork(root) for _ in range(args.beams)]
    eng.decode_step(beams, torch.full((args.beams,), ids[-1], device=eng.device))
    held = (eng.stats().referenced_blocks - before) * eng.pool.bytes_per_block
    unshared = args.beams * (args.kv_prompt + 1) * eng.pool.bytes_per_token
    for s in [root, *beams]:
        eng.release(s)
    return {"ours_bytes": held, "unshared_bytes": unshared, "fraction": held / unshared}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ponder.workers.engine import EngineConfig, EnginePolicy
    from ponder.workers.hf_policy import HFPolicy
    from ponder.workers.models import load_hf_model, load_tokenizer, resolve

    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    files = resolve(args.model)
    say(f"loading {files.name} ...")
    tokenizer = load_tokenizer(files)
    from ponder.workers.models import auto_dtype
    from ponder.workers.runtime import resolve_placement

    args.device, _ = resolve_placement(args.device, args.dtype)
    if not args.hf_dtype:
        args.hf_dtype = args.dtype if args.dtype != "auto" else auto_dtype(args.device, "hf")
    resolve_placement(args.device, args.hf_dtype)
    if args.dtype == "auto":
        args.dtype = auto_dtype(args.device)
    dtype, hf_dtype = getattr(torch, args.dtype), getattr(torch, args.hf_dtype)
    say(f"ours: {args.dtype}, transformers: {args.hf_dtype}")
    # one model in transformers' dtype; the engine makes its own fused copies in its dtype
    model = load_hf_model(files, dtype=hf_dtype).to(args.device)
    policy = EnginePolicy(
        files, model=model, tokenizer=tokenizer,
        config=EngineConfig(block_size=args.block_size, dtype=dtype, device=args.device),
    )
    hf_policy = HFPolicy(files, model=model, tokenizer=tokenizer, device=args.device, dtype=hf_dtype)
    P = policy.n_params
    ids = policy.encode(policy.format_prompt(Prompt(QUESTION)))
    res: dict[str, Any] = {
        "bench": "engine", "model": files.name, "non_embedding_params": P, "threads": torch.get_num_threads(),
        "quick": args.quick, "dtype": args.dtype, "hf_dtype": args.hf_dtype, "device": args.device, "prompt_tokens": len(ids),
        "sides": "ours = ponder's paged-KV engine; hf = transformers (generate for sampling, HFPolicy for the tree)",
        "targets": TARGETS,
        # The machine is shared: the load average says how much the figures were disturbed.
        "loadavg_start": os.getloadavg()[0],
    }

    verifier = ProbeVerifier(policy.hidden_size, args.seed)
    if args.warmup_tokens:
        say(f"warm-up: each job with {args.warmup_tokens} tokens, untimed ...")
        w, t0 = warmup_args(args), time.perf_counter()
        run_sampling_engine(policy, ids, w)
        if not args.skip_hf:
            run_sampling_hf(model, tokenizer, ids, w)
        run_tree(policy, verifier, w)
        if not args.skip_hf:
            run_tree(hf_policy, verifier, w)
        res["warmup"] = {"tokens": args.warmup_tokens, "s": time.perf_counter() - t0}

    say("(d) GEMM throughput ...")
    gemm = gemm_gflops(0.2 if args.quick else 1.5, dtype, args.device)
    peak = max(gemm.values())
    res["gemm"] = {"gflops": gemm, "limit_tok_s": peak * 1e9 / (2.0 * P)}

    say(f"(a) sampling {args.samples} x {args.new_tokens} tokens ...")
    dt, n = run_sampling_engine(policy, ids, args)
    say(f"    ours: {n} tokens in {dt:.1f} s")
    a: dict[str, Any] = {"ours_s": dt, "ours_tokens": n, "ours_tok_s": n / dt}
    if not args.skip_hf:
        hdt, hn = run_sampling_hf(model, tokenizer, ids, args)
        say(f"    transformers: {hn} tokens in {hdt:.1f} s")
        a.update(hf_s=hdt, hf_tokens=hn, hf_tok_s=hn / hdt, ratio=(n / dt) / (hn / hdt))
    res["sampling"] = a
    res["gemm"]["fraction"] = a["ours_tok_s"] / res["gemm"]["limit_tok_s"]

    say(f"(b) beam search N={args.beams} M={args.width} steps={args.steps} ...")
    dt, u = run_tree(policy, verifier, args)
    say(f"    ours: {u['decode_tokens']} decoded tokens in {dt:.1f} s")
    b: dict[str, Any] = {"ours_s": dt, "ours_usage": u, "ours_tok_s": u["decode_tokens"] / dt}
    if not args.skip_hf:
        hdt, hu = run_tree(hf_policy, verifier, args)
        say(f"    transformers: {hu['decode_tokens']} decoded tokens in {hdt:.1f} s")
        b.update(hf_s=hdt, hf_usage=hu, hf_tok_s=hu["decode_tokens"] / hdt)
        b["ratio"] = b["ours_tok_s"] / b["hf_tok_s"]
    res["tree"] = b

    say(f"(c) KV memory, {args.beams} beams over a {args.kv_prompt}-token prompt ...")
    res["kv"] = kv_memory(policy, tokenizer, args)

    res["loadavg_end"] = os.getloadavg()[0]
    if not args.json:
        print_table(res)
    print(json.dumps(res, default=float))
    return 0


def print_table(r: dict[str, Any]) -> None:
    a, b, kv, g = r["sampling"], r["tree"], r["kv"], r["gemm"]
    na = "n/a"
    rows = [
        ("(a) sampling tok/s", f"{a['ours_tok_s']:.1f}", f"{a['hf_tok_s']:.1f}" if "hf_tok_s" in a else na,
         f"{a['ratio']:.2f}x" if "ratio" in a else na, ">= 5x"),
        ("(b) beam search tok/s", f"{b['ours_tok_s']:.1f}", f"{b['hf_tok_s']:.1f}" if "hf_tok_s" in b else na,
         f"{b['ratio']:.2f}x" if "ratio" in b else na, ">= 5x"),
        ("(c) KV bytes (MiB)", f"{kv['ours_bytes'] / 2**20:.1f}", f"{kv['unshared_bytes'] / 2**20:.1f} (unshared)",
         f"{kv['fraction']:.3f}", "<= 0.25"),
        ("(d) GEMM-bound tok/s", f"{a['ours_tok_s']:.1f}", f"{g['limit_tok_s']:.1f} (limit)",
         f"{g['fraction']:.3f}", ">= 0.40"),
    ]
    head = ("job", "ours", "reference", "ratio", "target")
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(5)]
    for row in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    gf = ", ".join(f"{k} {v:.1f}" for k, v in g["gflops"].items())
    print(f"GEMM GFLOP/s ({r['dtype']}): {gf}; P = {r['non_embedding_params']:,}; threads = {r['threads']}")


if __name__ == "__main__":
    sys.exit(main())
