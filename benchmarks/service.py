"""Service latency and throughput under load, over real gRPC and Redis.

Starts `ponder serve` (private Redis, a scheduler, one worker) with the given model, then runs
the same set of questions twice, side by side in one run:
  - one at a time (each question waits for the previous answer), and
  - C clients at once (the worker batches every live question into one model call per tick).
For each: latency p50/p95 (submit → final), time to first streamed step, questions/s and
decoded tokens/s, and the throughput ratio concurrent / sequential.

    python benchmarks/service.py [--model M] [--questions 16] [--clients 16] [--budget 4] [--json]
    (also: ponder bench service …)

The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from ponder.clients.client import Client
from ponder.service.redis_server import free_port


def _serve(model: str, backend: str, port: int, device: str = "cpu", dtype: str = "auto") -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "ponder.cli.main", "serve", "--port", str(port), "--model", model,
           "--backend", backend, "--capacity", "64", "--device", device, "--dtype", dtype]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_ready(client: Client, proc: subprocess.Popen[bytes], timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"ponder serve exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            if client.info().workers_alive >= 1:
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise TimeoutError("the service did not become ready")


def _one(client: Client, question: str, opts: dict[str, Any]) -> dict[str, float]:
    t0 = time.perf_counter()
    first_step = None
    final = None
    for event in client.solve(question, **opts):
        kind = event.WhichOneof("kind")
        if kind == "step" and first_step is None:
            first_step = time.perf_counter() - t0
        elif kind == "final":
            final = event.final
        elif kind == "error":
            raise RuntimeError(f"{event.error.code}: {event.error.message}")
    assert final is not None
    return {
        "latency_s": time.perf_counter() - t0,
        "first_step_s": first_step if first_step is not None else float("nan"),
        "decode_tokens": float(final.usage.decode_tokens),
    }


def _run(client: Client, questions: list[str], opts: dict[str, Any], clients: int) -> dict[str, float]:
    results: list[dict[str, float]] = []
    lock = threading.Lock()
    todo = list(enumerate(questions))

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i, q = todo.pop(0)
            r = _one(client, q, {**opts, "seed": i})
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(r["latency_s"] for r in results)
    return {
        "clients": clients,
        "questions": len(results),
        "wall_s": wall,
        "latency_p50_s": statistics.median(lat),
        "latency_p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
        "first_step_p50_s": statistics.median(r["first_step_s"] for r in results),
        "questions_per_s": len(results) / wall,
        "decode_tokens_per_s": sum(r["decode_tokens"] for r in results) / wall,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="cpu", help="where the workers' model runs (cpu, cuda, cuda:N, auto)")
    p.add_argument("--dtype", default="auto", help="compute dtype (auto: bfloat16 on CUDA and, for the engine, on a CPU with native bf16; else float32)")
    p.add_argument("--questions", type=int, default=16)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--budget", type=int, default=4)
    p.add_argument("--strategy", default="best_of_n")
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--max-step-tokens", type=int, default=64)
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args(argv)

    questions = [f"What is {a} + {b}?" for a, b in zip(range(11, 99, 7), range(23, 99, 5))][: args.questions]
    while len(questions) < args.questions:
        questions.append(f"What is {len(questions)} * 3?")
    opts = dict(strategy=args.strategy, generations=args.budget, max_steps=args.max_steps,
                max_step_tokens=args.max_step_tokens)
    port = free_port()
    proc = _serve(args.model, args.backend, port, args.device, args.dtype)
    try:
        with Client(f"127.0.0.1:{port}") as client:
            _wait_ready(client, proc, 900)
            _one(client, "What is 1 + 1?", opts)  # warm-up (first call pays lazy initialisation)
            seq = _run(client, questions, opts, 1)
            conc = _run(client, questions, opts, args.clients)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    out = {
        "bench": "service", "model": args.model, "strategy": args.strategy, "budget": args.budget,
        "cpu_count": os.cpu_count(), "sequential": seq, "concurrent": conc,
        "throughput_ratio": conc["questions_per_s"] / seq["questions_per_s"],
    }
    if not args.json:
        print(f"{'':12} {'p50 s':>8} {'p95 s':>8} {'1st step':>9} {'q/s':>7} {'tok/s':>8}")
        for name, r in (("sequential", seq), (f"{args.clients} clients", conc)):
            print(f"{name:12} {r['latency_p50_s']:8.2f} {r['latency_p95_s']:8.2f} {r['first_step_p50_s']:9.2f} "
                  f"{r['questions_per_s']:7.2f} {r['decode_tokens_per_s']:8.1f}")
        print(f"throughput ratio (concurrent / sequential): {out['throughput_ratio']:.2f}x")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
