"""The `ponder` command line.

    ponder serve [--redis URL] [--port P] [--model M] [--workers N] [--demo QUESTION]
    ponder scheduler --redis URL [--port P]
    ponder worker --redis URL [--model M]
    ponder ask QUESTION [--server HOST:PORT] [--strategy S] [--budget N] [--json]
    ponder info | watch JOB | cancel JOB | result JOB   [--server HOST:PORT]
    ponder eval …   ponder flops …   ponder train {policy,prm,confidence,likelihood,revise,plan,vote,report} …   ponder bench {engine,kernels,service,adaptive,scaling} …
"""

from __future__ import annotations

import argparse
import importlib
import os
import runpy
import sys
from pathlib import Path
from typing import Any

import anyio

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On 2 shared cores a
# batched arith search took 13.2 s with spinning threads and 3.0 s with passive ones (1 thread:
# 2.0 s), because spinning threads steal the cores the other busy processes need.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ponder.proto.config import (
    DEFAULT_GENERATIONS, DEFAULT_STRATEGY, STRATEGIES, VERIFIER_HELP, Limits, SolveConfig, add_option_flags,
    options_from_args,
)
from ponder.proto.errors import InvalidArgument, PonderError

DEFAULT_QUESTION = "Compute 5 + 8 + 3 + 7 * 7."  # a test-split question of the built-in arith task
SERVER_HELP = "scheduler address (default: localhost:50051)"


REDIS_ENV = "PONDER_REDIS_URL"


def _common_service(p: argparse.ArgumentParser) -> None:
    from ponder.store.keys import DEFAULT_PREFIX

    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="Redis key prefix (one per deployment)")


def _redis_option(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--redis", default=os.environ.get(REDIS_ENV, ""), required=required and not os.environ.get(REDIS_ENV),
                   help=f"Redis URL without a password (default ${REDIS_ENV}; a URL with a password goes "
                        f"in ${REDIS_ENV}, not on the command line, where ps shows it)")


def _redis_url(a: argparse.Namespace) -> str:
    """The Redis URL; one with a password is refused on the command line."""
    from urllib.parse import urlparse

    url = a.redis
    if url and url != os.environ.get(REDIS_ENV) and urlparse(url).password:
        raise InvalidArgument("redis", f"the URL holds a password: pass it through ${REDIS_ENV}, not the command line")
    return url


def _tls_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-ca", default=None, help="TLS: the CA file that signed the server's certificate")
    p.add_argument("--tls-cert", default=None, help="mutual TLS: this client's certificate (PEM)")
    p.add_argument("--tls-key", default=None, help="mutual TLS: this client's key (PEM)")
    p.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")


def _client(a: argparse.Namespace) -> Any:
    """A Client for the command's server; the token comes from $PONDER_TOKEN or $PONDER_TOKEN_FILE."""
    from ponder.clients.client import Client, Tls

    tls = Tls(a.tls_ca, a.tls_cert, a.tls_key) if (a.tls or a.tls_ca or a.tls_cert) else None
    return Client(a.server, tls=tls)


def _worker_options(p: argparse.ArgumentParser) -> None:
    from ponder.workers.runtime import BACKENDS, DEFAULT_MODEL
    from ponder.workers.worker import WorkerConfig

    p.add_argument("--model", default=DEFAULT_MODEL, help="'arith' (built in), 'smollm2', a .gguf file or an HF model directory")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="engine (paged KV) or plain transformers")
    p.add_argument("--verifier", default="auto",
                   help=VERIFIER_HELP)
    p.add_argument("--reviser", default="auto",
                   help="model for revision prompts: 'auto' (the model's own, e.g. arith-reviser), 'none', or a model")
    p.add_argument("--plan", default="auto",
                   help="auto's plan table: 'auto' (the model's plan.json, else the default plan), 'default', or a path")
    p.add_argument("--capacity", type=int, default=WorkerConfig.capacity, help="questions one worker searches at once")
    _placement_options(p)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0 = auto: 1 for models under 20M parameters, else every core)")


def _placement_options(p: argparse.ArgumentParser) -> None:
    from ponder.workers.runtime import DEVICE_HELP, DTYPE_HELP

    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--dtype", default="auto", help=DTYPE_HELP)


def _solve_options(p: argparse.ArgumentParser) -> None:
    add_option_flags(p.add_argument_group("search options (SolveConfig's fields)"))
    p.add_argument("--timeout", type=float, default=None, help="gRPC deadline in seconds; cancels the job")


def config_from_args(question: str, a: argparse.Namespace) -> SolveConfig:
    return SolveConfig(question=question, **options_from_args(a))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ponder", description="Test-time compute reasoning service.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-format", choices=("text", "json"), default=os.environ.get("PONDER_LOG_FORMAT", "text"),
                        help="json: one JSON object per log line, with job_id, attempt and worker on job lines")
    sub = parser.add_subparsers(dest="command", required=True)
    # every service flag's default is its config dataclass's (SchedulerConfig, WorkerConfig)
    from ponder.scheduler.config import SchedulerConfig
    from ponder.workers.worker import WorkerConfig

    sched = SchedulerConfig

    p = sub.add_parser("serve", help="run Redis (private unless --redis), a scheduler and workers")
    _redis_option(p, required=False)
    p.add_argument("--host", default=sched.host)
    p.add_argument("--port", type=int, default=sched.port)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-generations", type=int, default=Limits().max_generations)
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--demo", nargs="?", const=DEFAULT_QUESTION, default=None,
                   help="ask this question once through gRPC, print the stream, and exit")
    p.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=STRATEGIES, help="strategy for --demo")
    p.add_argument("--budget", type=int, default=DEFAULT_GENERATIONS, help="budget for --demo")
    p.add_argument("--http", type=int, default=None, metavar="PORT",
                   help="also serve the OpenAI-compatible gateway (/v1/chat/completions, /view) on this port")
    p.add_argument("--metrics-port", type=int, default=None, help="serve the scheduler's Prometheus /metrics here")
    _common_service(p)
    _worker_options(p)
    p.set_defaults(demo_question=DEFAULT_QUESTION)

    p = sub.add_parser("scheduler", help="run a gRPC scheduler against a Redis")
    _redis_option(p, required=True)
    p.add_argument("--host", default=sched.host, help="bind address (0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=int, default=sched.port)
    p.add_argument("--max-generations", type=int, default=Limits().max_generations)
    p.add_argument("--grace", type=float, default=sched.grace_s, help="seconds in-flight calls get on SIGTERM")
    p.add_argument("--max-queued", type=int, default=sched.max_queued,
                   help="jobs waiting per priority before new ones get RESOURCE_EXHAUSTED (0: no cap)")
    p.add_argument("--tokens", default=None,
                   help="bearer tokens file ('NAME SECRET [admin]' per line; default $PONDER_TOKENS, the file's "
                        "content; neither: no authentication)")
    p.add_argument("--tls-cert", default=None, help="serve TLS with this certificate (PEM)")
    p.add_argument("--tls-key", default=None, help="... and this key (PEM)")
    p.add_argument("--tls-client-ca", default=None, help="mutual TLS: require client certificates signed by this CA")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.add_argument("--expose-workers", action="store_true",
                   help="without tokens: show worker hosts and ids in ServerInfo (with tokens: admins only)")
    _common_service(p)

    p = sub.add_parser("worker", help="run a worker against a Redis")
    _redis_option(p, required=True)
    p.add_argument("--lease", type=float, default=WorkerConfig.lease_s, help="seconds before a silent worker's job is re-run")
    p.add_argument("--isolate-after", type=int, default=WorkerConfig.isolate_after,
                   help="a job lost with this many dying workers runs alone from then on")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.add_argument("--max-solo-losses", type=int, default=WorkerConfig.max_solo_losses,
                   help="a job running alone that loses this many workers fails (it is what kills them)")
    p.add_argument("--drain", type=float, default=WorkerConfig.drain_s, help="seconds running jobs get to finish on SIGTERM")
    _common_service(p)
    _worker_options(p)

    p = sub.add_parser("gateway", help="an OpenAI-compatible HTTP gateway (/v1/chat/completions) to a scheduler")
    p.add_argument("--server", default="localhost:50051", help=SERVER_HELP)
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=int, default=8000)
    _tls_client_options(p)

    p = sub.add_parser("ask", help="ask a question and watch the reasoning stream in")
    p.add_argument("question")
    p.add_argument("--server", default="localhost:50051", help=SERVER_HELP)
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    _solve_options(p)
    _tls_client_options(p)

    for name, help_ in (("info", "models, strategies, workers, queue depth"),
                        ("watch", "stream a job's events"), ("cancel", "cancel a job"),
                        ("result", "a job's state and result")):
        p = sub.add_parser(name, help=help_)
        if name != "info":
            p.add_argument("job_id")
        if name == "watch":
            p.add_argument("--after", default="", help="resume after this event id")
            p.add_argument("--json", action="store_true")
        p.add_argument("--server", default="localhost:50051", help=SERVER_HELP)
        _tls_client_options(p)

    p = sub.add_parser("eval", help="accuracy vs compute per strategy on a dataset", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p = sub.add_parser("flops", help="the test-time budget that costs as much as a larger model", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p = sub.add_parser("train", help="train the arith policy, PRM, reviser, a model's confidence or likelihood calibration, its vote power; quality report", add_help=False)
    p.add_argument("what", choices=TRAIN_JOBS)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p = sub.add_parser("bench", help="run a benchmark from benchmarks/", add_help=False)
    p.add_argument("what", choices=BENCHMARKS)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _ask(a: argparse.Namespace) -> int:
    from ponder.clients.render import event_json, render

    cfg = config_from_args(a.question, a)
    code = 1
    with _client(a) as client:
        for event in client.solve(cfg, timeout=a.timeout):
            print(event_json(event) if a.json else render(event), flush=True)
            kind = event.WhichOneof("kind")
            if kind == "final":
                code = 0
    return code


def _job_command(a: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToJson

    from ponder.clients.render import event_json, render

    with _client(a) as client:
        if a.command == "info":
            print(MessageToJson(client.info(), preserving_proto_field_name=True))
        elif a.command == "cancel":
            print(client.cancel(a.job_id))
        elif a.command == "result":
            print(MessageToJson(client.result(a.job_id), preserving_proto_field_name=True))
        else:
            for event in client.watch(a.job_id, a.after):
                print(event_json(event) if a.json else render(event), flush=True)
    return 0


def _delegate(module: str, argv: list[str]) -> int:
    return int(importlib.import_module(module).main(argv) or 0)


def _bench(what: str, argv: list[str]) -> int:
    """Run ``benchmarks/<what>.py`` (package data of ``ponder.benchmarks``) as a script."""
    from ponder import benchmarks

    script = Path(benchmarks.__file__).resolve().parent / f"{what}.py"
    if not script.exists():
        print(f"ponder bench: {script} not found", file=sys.stderr)
        return 2
    sys.argv = [str(script), *argv]
    runpy.run_path(str(script), run_name="__main__")
    return 0


# ``ponder train JOB`` → its module in ponder.training
TRAIN_MODULES = {"policy": "train_policy", "prm": "prm", "confidence": "calibration", "likelihood": "likelihood",
                 "revise": "revise", "plan": "plan", "vote": "vote", "report": "report"}
TRAIN_JOBS = tuple(TRAIN_MODULES)
BENCHMARKS = ("engine", "arith_engine", "kernels", "service", "adaptive", "scaling", "chaos", "gpu_check")  # scripts in benchmarks/
DELEGATED = ("eval", "train", "bench", "flops")  # commands whose options belong to another module's parser


def _parse(argv: list[str]) -> argparse.Namespace:
    """argparse's REMAINDER drops a remainder that starts with an option (``eval --dataset X``),
    so the delegated commands are split off by hand; their own parsers check the rest."""
    i = next((k for k, a in enumerate(argv) if not a.startswith("-")), None)
    if i is not None and argv[i] in DELEGATED and all(a in ("-v", "--verbose") for a in argv[:i]):
        cmd, rest = argv[i], argv[i + 1 :]
        ns = argparse.Namespace(command=cmd, verbose=bool(argv[:i]), rest=rest,
                                log_format=os.environ.get("PONDER_LOG_FORMAT", "text"))
        if cmd not in ("eval", "flops"):
            choices = BENCHMARKS if cmd == "bench" else TRAIN_JOBS
            if not rest or rest[0] not in choices:
                build_parser().parse_args(argv[: i + 2])  # prints the usage error and exits 2
            ns.what, ns.rest = rest[0], rest[1:]
        return ns
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    from ponder.service.logs import setup_logging

    setup_logging(args.verbose, args.log_format)
    os.environ["PONDER_LOG_FORMAT"] = args.log_format  # processes this one starts log the same way
    try:
        if args.command == "serve":
            from ponder.service.supervisor import serve
            from ponder.workers.runtime import resolve_placement

            args.redis = _redis_url(args)
            args.device, args.dtype = resolve_placement(args.device, args.dtype)  # before anything starts
            return anyio.run(serve, args)
        if args.command == "scheduler":
            from ponder.scheduler.auth import TlsFiles, Tokens
            from ponder.scheduler.config import SchedulerConfig
            from ponder.scheduler.server import Scheduler

            if bool(args.tls_cert) != bool(args.tls_key):
                raise InvalidArgument("tls", "--tls-cert and --tls-key go together")
            if args.tls_client_ca and not args.tls_cert:
                raise InvalidArgument("tls_client_ca", "mutual TLS needs --tls-cert and --tls-key")
            tls = TlsFiles(Path(args.tls_cert), Path(args.tls_key),
                           Path(args.tls_client_ca) if args.tls_client_ca else None) if args.tls_cert else None
            cfg = SchedulerConfig(redis_url=_redis_url(args), host=args.host, port=args.port, prefix=args.prefix,
                                  limits=Limits(max_generations=args.max_generations), grace_s=args.grace,
                                  max_queued=args.max_queued, tokens=Tokens.load(args.tokens), tls=tls,
                                  expose_workers=args.expose_workers, metrics_port=args.metrics_port)
            cfg.tls.credentials() if cfg.tls else None  # unreadable files fail here, named
            anyio.run(Scheduler(cfg).serve_forever)
            return 0
        if args.command == "worker":
            from ponder.workers.runtime import run_worker

            args.redis = _redis_url(args)
            return run_worker(args)
        if args.command == "ask":
            return _ask(args)
        if args.command == "gateway":
            from ponder.clients.gateway import main as gateway_main

            return anyio.run(gateway_main, args)
        if args.command in ("info", "watch", "cancel", "result"):
            return _job_command(args)
        if args.command == "eval":
            return _delegate("ponder.evaluation.evaluate", args.rest)
        if args.command == "flops":
            return _delegate("ponder.evaluation.flops", args.rest)
        if args.command == "train":
            return _delegate(f"ponder.training.{TRAIN_MODULES[args.what]}", args.rest)
        if args.command == "bench":
            return _bench(args.what, args.rest)
    except PonderError as exc:
        print(f"ponder: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
