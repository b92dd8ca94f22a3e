"""Building a worker's policy and verifier from names, and running a worker process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
from ponder.proto.errors import InvalidArgument
from ponder.service.signals import serve_until_signalled
from ponder.workers.models import SMALL_MODEL_PARAMS, auto_dtype, resolve
from ponder.workers.policy import Policy
from ponder.workers.search.plan import PlanTable
from ponder.workers.verifier import Verifier

log = logging.getLogger(__name__)

BACKENDS = ("auto", "engine", "hf")
DEFAULT_MODEL = "arith"  # the built-in arithmetic policy (artifacts/arith); SmolLM2: --model smollm2


DEVICE_HELP = "where the model runs: 'auto' (the first CUDA device if there is one, else cpu), 'cpu', 'cuda', 'cuda:N'"
DTYPE_HELP = ("compute dtype: 'auto' (bfloat16 on CUDA; on the CPU bfloat16 for the engine where the CPU has native "
              "bf16 instructions, else float32, and float32 for the transformers backend), float32, bfloat16, "
              "float16 (CUDA only)")


def resolve_placement(device: str = "cpu", dtype: str = "float32") -> tuple[str, str]:
    """``(device, dtype)`` checked against this machine, ``auto`` resolved: the device always,
    the dtype on CUDA (bfloat16); on the CPU ``auto`` stays ``auto`` and is decided by the
    backend (:func:`build_policy`). A device the machine lacks (``cuda:1`` with one GPU, any
    CUDA without one) or a dtype the device cannot run (float16 on the CPU) is INVALID_ARGUMENT
    naming the flag, before any model loads."""
    import torch

    from ponder.workers.engine.config import parse_dtype

    device = (device or "cpu").strip().lower()
    if device == "auto":
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgument("device", f"{device!r} is not a device; {DEVICE_HELP}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgument("device", f"{device!r}: this machine has no CUDA device (use cpu)")
        index = dev.index or 0
        if index >= torch.cuda.device_count():
            raise InvalidArgument("device", f"{device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        device = f"cuda:{index}"
    elif dev.type != "cpu":
        raise InvalidArgument("device", f"{device!r}: only cpu and cuda are supported")
    name = (dtype or "auto").strip().lower()
    if name == "auto":
        if not device.startswith("cuda"):
            return device, "auto"
        name = "bfloat16"
    try:
        parsed = parse_dtype(name)
    except InvalidArgument as exc:
        raise InvalidArgument("dtype", exc.message.partition(": ")[2]) from None
    if parsed == torch.float16 and not device.startswith("cuda"):
        raise InvalidArgument("dtype", "float16 runs on CUDA only; on the CPU use float32 or bfloat16")
    if parsed == torch.bfloat16 and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise InvalidArgument("dtype", f"{device} does not support bfloat16; use float16 or float32")
    return device, str(parsed).removeprefix("torch.")


def build_policy(model: str = DEFAULT_MODEL, backend: str = "auto", device: str = "cpu", dtype: str = "float32") -> Policy:
    """The policy for ``model`` on ``device`` in ``dtype`` (see :func:`resolve_placement`): our
    paged-KV engine when it covers the architecture (``auto``/``engine``), else plain
    transformers (``hf``). ``auto`` on the CPU: :func:`ponder.workers.models.auto_dtype` for
    the backend that loads (the engine bf16 where the CPU has native bf16, transformers
    float32)."""
    if backend not in BACKENDS:
        raise InvalidArgument("backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
    device, dtype = resolve_placement(device, dtype)
    files = resolve(model)
    if backend in ("auto", "engine"):
        try:
            from ponder.workers.engine.engine_policy import EnginePolicy
        except ImportError:
            if backend == "engine":
                raise InvalidArgument("backend", "the engine is not available in this build") from None
        else:
            try:
                return EnginePolicy.load(model, device=device, dtype=dtype)
            except InvalidArgument:
                if backend == "engine":
                    raise
                log.warning("the engine does not cover %s; using plain transformers", files.name)
    import torch

    from ponder.workers.hf_policy import HFPolicy

    return HFPolicy(files, device=device, dtype=getattr(torch, auto_dtype(device, "hf") if dtype == "auto" else dtype))


def verifier_spec(spec: str, model: str = "") -> str:
    """The verifier ``spec`` names for ``model``: ``auto`` resolved to the model's own default
    (what :func:`build_verifier` loads, and what a run records so that it can be repeated after a
    default changes); any other spec as it is."""
    if spec != "auto":
        return spec
    default = resolve(model).default_verifier if model else None
    return default if default is not None else "confidence"


def build_verifier(spec: str, policy: Policy, model: str = "") -> Verifier | None:
    """``auto``: the model's own default verifier (ponder.json's "verifier"; for the built-in
    ``arith`` the likelihood verifier with arith-large as judge, ``models.BUILTIN_VERIFIERS``),
    else the confidence verifier (the policy's own token probabilities, calibrated when the
    model has a calibration); ``""``/``none``: no verifier; ``confidence[:PATH]``;
    ``likelihood:JUDGE[:…]``; a ``.safetensors`` file: a value head on the policy's hidden
    states; a directory: a separate PRM model."""
    spec = verifier_spec(spec, model)
    if spec in ("", "none"):
        return None
    try:
        from ponder.workers.prm import load_verifier
    except ImportError:
        raise InvalidArgument("verifier", "verifiers are not available in this build") from None
    return load_verifier(spec, policy)


def set_threads(threads: int, policy: Policy) -> int:
    """torch's intra-op threads. Auto: one thread for small models, whose ops are too short to
    split (arith's 3.4M-parameter policy: 2.0 s with one thread vs 3.0 s with two for the same
    batched search on 2 cores), every core otherwise."""
    import os

    import torch

    if threads <= 0:
        threads = 1 if policy.n_params < SMALL_MODEL_PARAMS else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


def build_reviser(
    spec: str, model: str, backend: str = "auto", device: str = "cpu", dtype: str = "float32"
) -> Policy | None:
    """``auto``: the model's own reviser (the built-in ``arith`` has ``arith-reviser``), else
    none — the policy then writes revisions itself; ``none``; or any model name or path."""
    if spec == "auto":
        spec = resolve(model).default_reviser or "none"
    if spec in ("", "none"):
        return None
    return build_policy(spec, backend, device, dtype)


def build_plan(spec: str, model: str, verifier: Verifier | None = None) -> PlanTable:
    """auto's plan table: ``auto`` (the table fitted for the verifier in use beside the model,
    ``plan-<verifier>.json``, else the model's ``plan.json`` when it was fitted for that verifier,
    else the default plan), ``default``/``none`` (the default plan), or a path. A table fitted on
    another model, or a table named by path for another verifier than the worker runs, is
    INVALID_ARGUMENT."""
    from ponder.workers.prm.confidence import model_fingerprint
    from ponder.workers.search.plan import DEFAULT_PLAN, PLAN_FILE, plan_file

    if spec in ("", "none", "default"):
        return DEFAULT_PLAN
    files = resolve(model) if model else None
    running = verifier.name if verifier is not None else ""
    if spec == "auto":
        if files is None or files.gguf_file:
            return DEFAULT_PLAN
        own = Path(files.path) / plan_file(running)
        path = own if running and own.exists() else Path(files.path) / PLAN_FILE
        if not path.exists():
            return DEFAULT_PLAN
    else:
        path = Path(spec).expanduser()
    table = PlanTable.load(path, model_fingerprint(files) if files is not None else None, files.name if files else "")
    if table.verifier and table.verifier != running and spec == "auto":
        # the model's table was fitted for its own verifier; another one asked for explicitly
        # gets the default plan, not an error (a table named by path must match)
        log.warning("%s was fitted with the verifier %r, not %r: using the default plan", path, table.verifier, running)
        return DEFAULT_PLAN
    if table.verifier and table.verifier != running:
        raise InvalidArgument(
            "plan", f"{path} was fitted with the verifier {table.verifier!r}; this worker runs {running or 'none'!r}"
        )
    fitted, power = table.fit.get("vote_power", 1.0), verifier.vote_power if verifier is not None else 1.0
    if table.verifier and fitted != power:  # its cells compared weighted votes counted another way
        log.warning("%s was fitted with vote power %g; the verifier's is now %g: refit it with `ponder train plan`",
                    path, fitted, power)
    return table


def run_worker(args: Any) -> int:
    """Entry point of `ponder worker`."""
    from ponder.workers.worker import Worker, WorkerConfig

    cfg = WorkerConfig(
        redis_url=args.redis, prefix=args.prefix, capacity=args.capacity, lease_s=args.lease,
        drain_s=args.drain, isolate_after=args.isolate_after, max_solo_losses=args.max_solo_losses,
        metrics_port=args.metrics_port,
    )
    device, dtype = resolve_placement(args.device, args.dtype)  # a bad flag fails before the model loads
    log.info("loading model %s on %s (%s)", args.model, device, dtype)
    policy = build_policy(args.model, args.backend, device, dtype)
    set_threads(args.threads, policy)
    verifier = build_verifier(args.verifier, policy, args.model)
    reviser = build_reviser(args.reviser, args.model, args.backend, device, dtype)
    plan = build_plan(getattr(args, "plan", "auto"), args.model, verifier)
    worker = Worker(cfg, policy, verifier, reviser, plan)
    try:
        anyio.run(serve_until_signalled, worker.run)
    except Exception:  # a bug in the worker: say so and exit non-zero (its jobs are reclaimed)
        log.exception("the worker failed")
        return 1
    return 1 if worker.failed else 0
