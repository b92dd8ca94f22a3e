"""Prometheus metrics of a real scheduler and worker after real jobs (scraped over HTTP), and
the worker's structured (JSON) logs."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid

from service_utils import Proc, start_scheduler, wait_until, workers_alive

from ponder.clients.client import Client
from ponder.service.redis_server import free_port


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(ponder_[^ ]+) ([0-9.e+-]+|NaN)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_scheduler_and_worker_metrics_count_real_work(redis_url: str) -> None:
    prefix = f"m{uuid.uuid4().hex[:8]}"
    sm, wm = free_port(), free_port()
    sched, port = start_scheduler(redis_url, prefix, extra=["--metrics-port", str(sm)])
    worker = Proc("worker", ["--log-format", "json", "worker", "--redis", redis_url, "--prefix", prefix, "--model",
                             "arith", "--threads", "1", "--metrics-port", str(wm)])
    try:
        wait_until(lambda: workers_alive(port) >= 1, 120, "the worker", [sched, worker])
        with Client(f"127.0.0.1:{port}") as c:
            c.ask("Compute 2 + 3 * 4.", strategy="auto", generations=8, seed=1)
            c.ask("Compute 6 - 1.", generations=2, seed=1)
            try:
                c.result("not-a-job")
            except Exception:
                pass
        wait_until(lambda: scrape(sm).get("ponder_workers_alive", 0) >= 1, 10, "the scheduler's sample", [sched])
        s, w = scrape(sm), scrape(wm)
    finally:
        worker.stop()
        sched.stop()
    # structured logs: every line is one JSON object; job lines carry the job, attempt and worker
    lines = [json.loads(line) for line in worker.log_path.read_text().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
    jobs = [x for x in lines if "job_id" in x]
    assert {x.get("state") for x in jobs} >= {None, "done"} and len({x["job_id"] for x in jobs}) == 2
    assert all(x["attempt"] == 1 and x["worker"] for x in jobs)
    assert s['ponder_requests_total{code="OK",method="Solve"}'] == 2
    assert s['ponder_requests_total{code="INVALID_ARGUMENT",method="GetResult"}'] == 1
    assert s['ponder_jobs_submitted_total{priority="normal"}'] == 2
    assert 'ponder_queue_depth{queue="normal"}' in s and s["ponder_open_streams"] == 0
    assert w['ponder_jobs_finished_total{state="done"}'] == 2
    assert w["ponder_job_latency_seconds_count"] == 2 and w["ponder_answer_generations_sum"] >= 3
    assert w["ponder_decoded_tokens_total"] > 0 and w["ponder_batch_rows_count"] > 0
    assert sum(v for k, v in w.items() if k.startswith("ponder_controller_decisions_total")) >= 1
    assert w['ponder_kv_blocks{kind="free"}'] > 0
