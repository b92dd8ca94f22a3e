"""Prometheus metrics of the service (``--metrics-port``); names are listed in docs/operations.md.

Each process exposes its own: a scheduler its calls, queues and streams; a worker its jobs,
tokens, KV cache, batches and controller decisions. Scrape every process (rates, such as
decoded tokens/s, are ``rate()`` of the counters).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# -- scheduler -------------------------------------------------------------------------------
REQUESTS = Counter("ponder_requests", "gRPC calls by method and final status code", ["method", "code"])
SUBMITTED = Counter("ponder_jobs_submitted", "jobs created, by priority queue", ["priority"])
QUEUE_DEPTH = Gauge("ponder_queue_depth", "jobs waiting for a worker, by queue", ["queue"])
RUNNING = Gauge("ponder_jobs_running", "jobs held by workers")
WORKERS = Gauge("ponder_workers_alive", "workers with a recent heartbeat")
STREAMS = Gauge("ponder_open_streams", "Solve/Watch streams this scheduler is relaying")

# -- worker ----------------------------------------------------------------------------------
LATENCY = Histogram("ponder_job_latency_seconds", "submit to final, per job",
                    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 150, 300, 900))
QUEUE_TIME = Histogram("ponder_job_queue_seconds", "submit to start, per job",
                       buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120))
FINISHED = Counter("ponder_jobs_finished", "jobs a worker ended, by state", ["state"])
ANSWER_GENERATIONS = Histogram("ponder_answer_generations", "generations spent per answer",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
ANSWER_TOKENS = Histogram("ponder_answer_tokens", "policy and PRM tokens per answer",
                          buckets=(64, 256, 1024, 4096, 16384, 65536, 262144, 1048576))
ANSWER_FLOPS = Histogram("ponder_answer_flops", "FLOPs per answer", buckets=tuple(10.0**e for e in range(6, 17)))
DECODED = Counter("ponder_decoded_tokens", "policy tokens decoded (rate() = decoded tokens/s)")
KV_BLOCKS = Gauge("ponder_kv_blocks", "paged KV cache blocks, by kind (in_use, cached, free)", ["kind"])
KV_REUSED = Gauge("ponder_kv_reused_tokens", "prompt tokens served from the prefix index so far")
BATCH_ROWS = Histogram("ponder_batch_rows", "rows (nodes of every question) in one expand call",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
DECISIONS = Counter("ponder_controller_decisions", "live controller and planner decisions, by kind", ["kind"])
ACTIVE = Gauge("ponder_active_jobs", "jobs this worker is running")


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> Any:
    """Start the /metrics endpoint on host:port (0: a free port; None: off); returns its HTTP
    server (``server_port``; ``shutdown()`` stops it), or None."""
    if port is None:
        return None
    server, _ = start_http_server(port, addr=host)
    return server
