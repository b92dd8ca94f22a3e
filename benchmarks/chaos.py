"""The service under faults, over real processes, Redis and gRPC: what survives and how fast.

Starts a private Redis, one scheduler and W workers (the built-in arith model, short leases)
as separate processes, then runs these scenarios one after the other:

  kills     N jobs while K random workers are SIGKILLed and restarted: single finals, jobs
            failed, jobs that ran more than once, jobs isolated (lost with two workers);
  redis     Redis SIGKILLed mid-run and restarted, without persistence (every key lost) and
            with an fsynced append-only file: how long until a new question is answered, and
            whether every in-flight job completed or failed visibly with its job id (none hangs);
  scheduler the scheduler SIGKILLed mid-stream and restarted on its port: do the clients'
            streams resume and end with their job's final?
  streams   S concurrent Solve streams on the one scheduler: errors, and the scheduling
            overhead submit → started (the Queued and Started events' server timestamps) of
            jobs one step of 4 tokens long (the nearest this model gets to a null model).

    python benchmarks/chaos.py [--jobs 100] [--kills 6] [--workers 3] [--streams 1000] [--quick]
    (also: ponder bench chaos …)

Hostile input is measured by the test suite (tests/test_hardening.py: 2,300 fuzz cases).
The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ponder.clients.client import AsyncClient, Client
from ponder.service.redis_server import RedisServer, free_port

LONG_JOB = dict(generations=4, max_steps=8, max_step_tokens=16, temperature=0.8)  # several seconds in a batch
TINY_JOB = dict(generations=1, max_steps=1, max_step_tokens=4)
QUESTIONS = [f"Compute {a} + {b} * {c}." for a in range(2, 12) for b in range(2, 7) for c in range(2, 5)]


class Procs:
    """The scheduler and workers, their logs in one folder."""

    def __init__(self, redis_url: str, workers: int, lease: float, logs: Path) -> None:
        self.url, self.lease, self.logs = redis_url, lease, logs
        self.prefix = f"chaos{uuid.uuid4().hex[:6]}"
        self.port = free_port()
        self.n = 0
        self.scheduler = self._start_scheduler()
        self.workers = [self._start_worker() for _ in range(workers)]

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self.n += 1
        log = open(self.logs / f"{self.n:03d}-{name}.log", "wb")
        env = {"PONDER_REDIS_URL": self.url, "PYTHONUNBUFFERED": "1"}
        import os

        return subprocess.Popen([sys.executable, "-m", "ponder.cli.main", *args], stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, **env})

    def _start_scheduler(self) -> subprocess.Popen[bytes]:
        return self._spawn("scheduler", ["scheduler", "--prefix", self.prefix, "--port", str(self.port),
                                         "--max-queued", "0"])

    def _start_worker(self) -> subprocess.Popen[bytes]:
        return self._spawn("worker", ["worker", "--prefix", self.prefix, "--model", "arith", "--threads", "1",
                                      "--lease", str(self.lease), "--capacity", "64", "--drain", "2"])

    def kill_worker(self, rng: random.Random) -> None:
        i = rng.randrange(len(self.workers))
        self.workers[i].send_signal(signal.SIGKILL)
        self.workers[i].wait()
        self.workers[i] = self._start_worker()

    def kill_scheduler(self) -> None:
        self.scheduler.send_signal(signal.SIGKILL)
        self.scheduler.wait()
        self.scheduler = self._start_scheduler()

    def stop(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in [*self.workers, self.scheduler]:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def wait_workers(target: str, n: int, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    with Client(target) as c:
        while time.monotonic() < end:
            try:
                if c.info().workers_alive >= n:
                    return
            except Exception:
                pass
            time.sleep(0.5)
    raise TimeoutError(f"{n} workers not ready after {timeout:.0f} s")


async def run_jobs(target: str, n: int, opts: dict[str, Any], resume_s: float, timeout: float,
                   seed: int = 0) -> list[dict[str, Any]]:
    """n concurrent Solve streams; per job: its terminal events, attempts seen, error."""
    async with AsyncClient(target, resume_timeout=resume_s) as c:
        async def one(i: int) -> dict[str, Any]:
            out: dict[str, Any] = {"finals": 0, "errors": 0, "attempts": 1, "job_id": "", "error": "",
                                   "queued_t": None, "started_t": None}
            try:
                async for e in c.solve(QUESTIONS[i % len(QUESTIONS)], seed=seed + i, timeout=timeout, **opts):
                    out["job_id"] = e.job_id
                    kind = e.WhichOneof("kind")
                    if kind == "queued":
                        out["queued_t"] = e.time
                    elif kind == "started":
                        out["attempts"] = max(out["attempts"], e.started.attempt)
                        out["started_t"] = out["started_t"] or e.time
                    elif kind == "final":
                        out["finals"] += 1
                    elif kind == "error":
                        out["errors"] += 1
                        out["error"] = f"{e.error.code}: {e.error.message}"
            except Exception as exc:  # a client-side failure: does it name the job?
                out["error"] = f"{getattr(exc, 'code', type(exc).__name__)}: {exc}"
                out["job_id"] = out["job_id"] or getattr(exc, "job_id", "")
                out["raised"] = True
            return out

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def scenario_kills(procs: Procs, target: str, jobs: int, kills: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    result: list[dict[str, Any]] = []
    t = threading.Thread(target=lambda: result.extend(asyncio.run(run_jobs(target, jobs, LONG_JOB, 60, 900))))
    t0 = time.monotonic()
    t.start()
    killed = 0
    while killed < kills and t.is_alive():  # kills only count while jobs are in flight
        time.sleep(rng.uniform(1.0, 3.0))
        procs.kill_worker(rng)
        killed += 1
    t.join()
    return {
        "jobs": jobs, "kills": killed, "wall_s": round(time.monotonic() - t0, 1),
        "single_finals": sum(r["finals"] == 1 and r["errors"] == 0 for r in result),
        "failed": sum(r["errors"] > 0 or r.get("raised", False) for r in result),
        "failed_for_lost_workers": sum("alone" in r["error"] for r in result),
        "ran_more_than_once": sum(r["attempts"] > 1 for r in result),
        "max_attempt": max((r["attempts"] for r in result), default=0),
        "errors": sorted({r["error"] for r in result if r["error"]})[:5],
    }


def scenario_redis(redis: RedisServer, procs: Procs, target: str, inflight: int, down_s: float) -> dict[str, Any]:
    result: list[dict[str, Any]] = []
    # jobs long enough (~10 s) to be in flight when Redis goes down 1 s in
    redis_job = dict(LONG_JOB, generations=32, max_steps=10, max_step_tokens=24)
    t = threading.Thread(target=lambda: result.extend(asyncio.run(run_jobs(target, inflight, redis_job, 30, 180))))
    t.start()
    time.sleep(1.0)
    redis.crash_and_restart(down_s)
    restarted = time.monotonic()
    answered_s = None
    with Client(target) as c:
        while time.monotonic() - restarted < 60:
            try:
                c.ask("Compute 2 + 3.", timeout=5, **TINY_JOB)
                answered_s = time.monotonic() - restarted
                break
            except Exception:
                time.sleep(0.2)
    t.join(180)
    hung = t.is_alive()
    done = [r for r in result if r["finals"] == 1]
    failed = [r for r in result if r["finals"] == 0]
    return {
        "persistent": redis.persist, "down_s": down_s, "in_flight": inflight,
        "new_question_answered_after_s": None if answered_s is None else round(answered_s, 2),
        "completed": len(done),
        "failed_visibly_with_job_id": sum(bool(r["job_id"]) and r["job_id"] in r["error"] for r in failed),
        "failed_without_job_id": sum(not r["job_id"] for r in failed), "hung": hung,
        "errors": sorted({r["error"][:160] for r in failed})[:3],
    }


def scenario_scheduler(procs: Procs, target: str, jobs: int) -> dict[str, Any]:
    result: list[dict[str, Any]] = []
    t = threading.Thread(target=lambda: result.extend(asyncio.run(run_jobs(target, jobs, LONG_JOB, 60, 300))))
    t.start()
    time.sleep(2.0)
    procs.kill_scheduler()
    t.join()
    return {"jobs": jobs, "finals": sum(r["finals"] == 1 for r in result),
            "errors": sorted({r["error"][:160] for r in result if r["error"]})[:3]}


def scenario_streams(target: str, streams: int) -> dict[str, Any]:
    t0 = time.monotonic()
    result = asyncio.run(run_jobs(target, streams, TINY_JOB, 60, 600))
    wall = time.monotonic() - t0
    timed = sorted((r["queued_t"], r["started_t"] - r["queued_t"]) for r in result if r["started_t"] and r["queued_t"])
    sched = sorted(d for _, d in timed)
    # the first tenth of the jobs to be queued (server time), before the batches fill up
    alone = sorted(d for _, d in timed[: max(1, len(timed) // 10)])

    def pct(xs: list[float], q: float) -> float | None:
        return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 1) if xs else None

    return {
        "streams": streams, "wall_s": round(wall, 1),
        "errors": sum(bool(r["error"]) for r in result), "finals": sum(r["finals"] == 1 for r in result),
        "submit_to_started_ms": {"p50": pct(sched, 0.5), "p99": pct(sched, 0.99), "max": pct(sched, 1.0)},
        "note": "under this load submit→started includes waiting for a free batch slot; "
                "the p99 of the first tenth of jobs queued is the overhead while slots were free",
        "first_tenth_p99_ms": pct(alone, 0.99),
        "mean_ms": round(statistics.fmean(sched) * 1000, 1) if sched else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--lease", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenarios", default="kills,redis,scheduler,streams")
    ap.add_argument("--quick", action="store_true", help="20 jobs, 2 kills, 2 workers, 100 streams")
    ap.add_argument("--logs", type=Path, default=None, help="keep the processes' logs here")
    ap.add_argument("--doc", type=Path, default=None,
                    help="write the results block of this page (docs/operations.md) and a JSON beside it")
    a = ap.parse_args(argv)
    if a.quick:
        a.jobs, a.kills, a.workers, a.streams = 20, 2, 2, 100
    wanted = a.scenarios.split(",")
    logs = a.logs or Path(tempfile.mkdtemp(prefix="ponder-chaos-"))
    logs.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"benchmark": "chaos", "workers": a.workers, "lease_s": a.lease, "logs": str(logs)}
    t_all = time.monotonic()
    for persist in (False, True) if "redis" in wanted else (False,):
        redis = RedisServer(persist=persist)
        url = redis.start()
        procs = Procs(url, a.workers, a.lease, logs)
        target = f"127.0.0.1:{procs.port}"
        try:
            wait_workers(target, a.workers)
            if not persist:
                if "kills" in wanted:
                    print("· kills …", file=sys.stderr, flush=True)
                    out["kills"] = scenario_kills(procs, target, a.jobs, a.kills, a.seed)
                if "scheduler" in wanted:
                    print("· scheduler SIGKILL …", file=sys.stderr, flush=True)
                    wait_workers(target, a.workers)
                    out["scheduler_kill"] = scenario_scheduler(procs, target, 10)
                if "streams" in wanted:
                    print(f"· {a.streams} streams …", file=sys.stderr, flush=True)
                    wait_workers(target, a.workers)
                    out["streams"] = scenario_streams(target, a.streams)
            if "redis" in wanted:
                print(f"· Redis restart ({'with' if persist else 'without'} persistence) …", file=sys.stderr, flush=True)
                wait_workers(target, a.workers)
                key = "redis_restart_persistent" if persist else "redis_restart_lost"
                out[key] = scenario_redis(redis, procs, target, 10, down_s=3.0)
        finally:
            procs.stop()
            redis.stop()
    out["tracebacks_in_logs"] = sum(f.read_text(errors="replace").count("Traceback") for f in logs.glob("*.log"))
    out["wall_s"] = round(time.monotonic() - t_all, 1)
    out["command"] = "python benchmarks/chaos.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if a.doc:
        from ponder.benchmarks.adaptive import write_doc  # the same results-block convention as docs/adaptive.md

        a.doc.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
        write_doc(a.doc, results_block(out))
    print(json.dumps(out))
    return 0


def results_block(r: dict[str, Any]) -> str:
    """The measured block of docs/operations.md."""
    lines = [f"Measured by `{r['command']}` ({r['workers']} workers, lease {r['lease_s']} s; the whole run "
             f"{r['wall_s']:.0f} s; tracebacks in all the processes' logs: {r['tracebacks_in_logs']}).", ""]
    lines += ["| scenario | result |", "|---|---|"]
    if "kills" in r:
        k = r["kills"]
        lines.append(f"| {k['jobs']} jobs, {k['kills']} worker SIGKILLs (each restarted) | {k['single_finals']} single "
                     f"finals, {k['failed']} failed ({k['failed_for_lost_workers']} for lost workers); "
                     f"{k['ran_more_than_once']} jobs re-run, highest attempt {k['max_attempt']}; {k['wall_s']} s |")
    for key, label in (("redis_restart_lost", "Redis SIGKILLed, down {d} s, restarted **without** its data"),
                       ("redis_restart_persistent", "Redis SIGKILLed, down {d} s, restarted **with** its data (AOF)")):
        if key in r:
            x = r[key]
            after = x["new_question_answered_after_s"]
            answered = (f"a new question answered {after} s after the restart" if after is not None
                        else "**no new question answered within 60 s**")
            lines.append(f"| {label.format(d=x['down_s'])}, {x['in_flight']} jobs in flight | {answered}; {x['completed']} completed, "
                         f"{x['failed_visibly_with_job_id']} failed naming their job, {x['failed_without_job_id']} "
                         f"failed without a job id; hung: {x['hung']} |")
    if "scheduler_kill" in r:
        x = r["scheduler_kill"]
        lines.append(f"| the scheduler SIGKILLed mid-stream and restarted, {x['jobs']} streams | "
                     f"{x['finals']} ended with their final (resumed through Watch) |")
    if "streams" in r:
        x = r["streams"]
        t = x["submit_to_started_ms"]
        lines.append(f"| {x['streams']} concurrent Solve streams (jobs of one 4-token step) | {x['errors']} errors, "
                     f"{x['finals']} finals in {x['wall_s']} s; submit → started p50 {t['p50']} ms, p99 {t['p99']} ms "
                     f"(waiting for a batch slot included); p99 of the first tenth of jobs queued {x['first_tenth_p99_ms']} ms |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
