"""The prepared GPU check: everything ponder claims about a CUDA machine, in one run of at most
about 8 minutes on one H100/H200, summarised in one JSON object.

Sections (each in its own process, with its own time limit, so one failure or hang costs only
its own share):

  env       torch / triton / transformers versions, the device, bf16 support
  kernels   every Triton kernel against its PyTorch reference on GPU-sized cases, timed with
            triton.testing.do_bench (benchmarks/kernels.py --large: beams up to 1024, KV up to
            8192 tokens, GQA geometries)
  engine    the paged-KV engine against transformers on the same sampling and beam-search jobs
            (benchmarks/engine.py) for SmolLM2-135M and a randomly initialised 1B-parameter
            Llama shape, bf16
  service   `ponder serve --device cuda --demo`: a question answered through gRPC by a worker
            whose model, verifier and prune run on the GPU

    python benchmarks/gpu_check.py [--out gpu_check.json] [--sections env,kernels,engine,service]
                                   [--device cuda] [--dtype bfloat16] [--quick]

On a machine without CUDA, ``--device cpu --quick`` runs the same plumbing at toy sizes (the
kernels in the Triton interpreter, the engine on a tiny model, the service on arith), which is
how the test suite checks this script. The last printed line is the JSON summary; ``--out``
also writes it to a file. Exit status 0 when every section ran and agreed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SECTIONS = ("env", "kernels", "engine", "service")
# seconds per section on the GPU: 8 minutes in all, with room for model loading
BUDGET_S = {"env": 30, "kernels": 150, "engine": 210, "service": 90}
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, max_position_embeddings=4096, rope_theta=500000.0)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="ponder bench gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (a plumbing check at toy sizes)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON summary here")
    ap.add_argument("--engine-models", default="smollm2,llama-1b",
                    help="models for the engine section: smollm2, llama-1b (random init), or model paths")
    ap.add_argument("--service-model", default="smollm2", help="model for the service smoke test")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every section's time limit")
    a = ap.parse_args(argv)
    a.sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = [s for s in a.sections if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if a.device.startswith("cpu") and a.dtype == "float16":
        ap.error("--dtype float16 needs a CUDA device")
    return a


def last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pgid, sig)


def _stop_group(p: subprocess.Popen[str], grace: float = 10.0) -> tuple[str, str]:
    """SIGTERM, then SIGKILL, to the section's whole process group, so that what it started (the
    service's workers and Redis) stops with it instead of holding the GPU and its ports; returns
    the output read so far."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        _killpg(p.pid, sig)
        try:
            return p.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    p.kill()  # something outside the group holds the pipes: give up on the output
    p.wait()
    return "", ""


def run(cmd: list[str], timeout: float, env: dict[str, str | None] | None = None) -> dict[str, Any]:
    """A section's process: its exit code, wall time, last JSON line and the tail of its output.
    It runs in a process group of its own, stopped as a whole at the time limit (subprocess.run
    would SIGKILL only the direct child and orphan its children). ``env``: None unsets."""
    t0 = time.monotonic()
    environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ,
                         start_new_session=True)
    try:
        try:
            out, err = p.communicate(timeout=timeout)
            rc: int | str = p.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout" if p.poll() is None else p.returncode  # exited, but a child held the pipes
            out, err = _stop_group(p)
        _killpg(p.pid, signal.SIGKILL)  # anything it left behind
    except BaseException:  # Ctrl-C or SIGTERM here: the section must not outlive this process
        _killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise
    return {"rc": rc, "wall_s": round(time.monotonic() - t0, 1), "result": last_json(out),
            "tail": (out + err)[-1500:] if rc != 0 else ""}


def child_env(a: argparse.Namespace) -> dict[str, str | None]:
    """On CUDA no section may inherit TRITON_INTERPRET (set by the test suite's conftest): the
    kernels would run in the interpreter on GPU tensors, far past every time limit."""
    return {} if a.device.startswith("cpu") else {"TRITON_INTERPRET": None}


def section_env(a: argparse.Namespace) -> dict[str, Any]:
    code = (
        "import json, torch, transformers\n"
        "try:\n import triton; tv = triton.__version__\nexcept Exception as e: tv = f'unavailable: {e}'\n"
        "cuda = torch.cuda.is_available()\n"
        "print(json.dumps({'torch': torch.__version__, 'triton': tv, 'transformers': transformers.__version__,"
        " 'cuda': cuda, 'devices': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],"
        " 'bf16': bool(cuda and torch.cuda.is_bf16_supported()), 'cpu_threads': torch.get_num_threads()}))\n"
    )
    return run([sys.executable, "-c", code], BUDGET_S["env"] * a.budget_scale, child_env(a))


def section_kernels(a: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "kernels.py"), "--json", "--device", a.device]
    if not a.device.startswith("cpu"):
        cmd.append("--quick" if a.quick else "--large")
    r = run(cmd, BUDGET_S["kernels"] * a.budget_scale, child_env(a))
    res = r["result"] or {}
    r["summary"] = {"all_ok": res.get("all_ok"), "cases": res.get("cases"), "timed": res.get("timed"),
                    "device": res.get("device")}
    return r


def make_random_llama(root: Path, tokenizer_model: str, quick: bool) -> Path:
    """A randomly initialised Llama of ~1B parameters (a toy size with --quick) with SmolLM2's
    tokenizer, saved as an HF directory: the engine's speed on a GEMM-heavy shape."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ponder.workers.models import load_tokenizer, resolve

    tok = load_tokenizer(resolve(tokenizer_model))
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024) if quick else LLAMA_1B
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=True, **shape)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)  # type: ignore[arg-type]  # (transformers' annotation)
    out = root / ("llama-toy" if quick else "llama-1b")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "ponder.json").write_text(json.dumps({"name": out.name}))
    return out


def section_engine(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = [m.strip() for m in a.engine_models.split(",") if m.strip()]
    # one time limit for the whole section, building the random Llama included: each model gets
    # an equal share of what is left when it starts
    deadline = time.monotonic() + BUDGET_S["engine"] * a.budget_scale
    for i, name in enumerate(names):
        model = name
        if name == "llama-1b":
            try:
                model = str(make_random_llama(work, "smollm2", a.quick))
            except Exception as exc:  # reported, not fatal: the other models still run
                out[name] = {"rc": "setup", "tail": f"{type(exc).__name__}: {exc}"}
                continue
        cmd = [sys.executable, str(HERE / "engine.py"), "--json", "--model", model, "--device", a.device,
               "--dtype", a.dtype if not a.device.startswith("cpu") else "float32"]
        if a.quick:
            cmd.append("--quick")
        left = deadline - time.monotonic()
        if left <= 0:
            out[name] = {"rc": "timeout", "wall_s": 0.0, "result": None, "tail": "skipped: the engine section's time was spent"}
            continue
        r = run(cmd, left / (len(names) - i), child_env(a))
        res = r["result"] or {}
        r["summary"] = {"sampling_ratio": (res.get("sampling") or {}).get("ratio"),
                        "tree_ratio": (res.get("tree") or {}).get("ratio"),
                        "ours_sampling_tok_s": (res.get("sampling") or {}).get("ours_tok_s"),
                        "kv_fraction": (res.get("kv") or {}).get("fraction")}
        out[name] = r
    return out


def section_service(a: argparse.Namespace) -> dict[str, Any]:
    model = "arith" if a.device.startswith("cpu") and a.quick else a.service_model
    limit = BUDGET_S["service"] * a.budget_scale
    # serve's own ready timeout (default 600 s) inside the section's limit: a worker that never
    # gets ready is reported by serve, which then stops its workers and Redis itself
    cmd = [sys.executable, "-m", "ponder.cli.main", "serve", "--port", "0", "--model", model,
           "--device", a.device, "--dtype", a.dtype if not a.device.startswith("cpu") else "float32",
           "--ready-timeout", str(max(5, round(limit * 3 / 4))), "--budget", "2", "--demo", "What is 12 + 30?"]
    r = run(cmd, limit, child_env(a))
    r["answered"] = r["rc"] == 0
    return r


def ok(section: str, r: Any, gpu: bool = False) -> bool:
    """Whether a section ran and agreed; on a GPU run (``gpu``) also that it ran on the GPU: a
    torch that sees no CUDA device runs kernels.py in the interpreter, which passes untimed."""
    if section == "engine":
        return bool(r) and all(v.get("rc") == 0 for v in r.values())
    res = r.get("result") or {}
    if section == "kernels":
        return r.get("rc") == 0 and bool(res.get("all_ok")) and (not gpu or bool(res.get("timed")))
    if section == "env" and gpu:
        return r.get("rc") == 0 and bool(res.get("cuda"))
    return r.get("rc") == 0


def main(argv: list[str] | None = None) -> int:
    from ponder.evaluation.curves import json_finite

    a = parse(argv)
    dtype = a.dtype if not a.device.startswith("cpu") else "float32"  # the CPU plumbing check runs fp32
    summary: dict[str, Any] = {"bench": "gpu_check", "device": a.device, "dtype": dtype, "quick": a.quick,
                               "sections": {}, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    unset = [k for k, v in child_env(a).items() if v is None and k in os.environ]
    if unset:
        summary["unset_env"] = unset
    gpu = not a.device.startswith("cpu")
    t0 = time.monotonic()

    def finish() -> str:
        summary["ok"] = {s: ok(s, r, gpu) for s, r in summary["sections"].items()}
        summary["all_ok"] = all(summary["ok"].values())
        summary["wall_s"] = round(time.monotonic() - t0, 1)
        line = json.dumps(json_finite(summary, as_text=True), default=str, allow_nan=False)
        if a.out:  # after every section: a check stopped from outside keeps what it finished
            try:
                a.out.write_text(line + "\n")
            except OSError as exc:
                print(f"gpu_check: cannot write {a.out}: {exc}", file=sys.stderr, flush=True)
        return line

    with tempfile.TemporaryDirectory(prefix="ponder-gpu-check-") as tmp:
        for s in a.sections:
            print(f"· {s} …", file=sys.stderr, flush=True)
            try:
                if s == "env":
                    r: Any = section_env(a)
                elif s == "kernels":
                    r = section_kernels(a)
                elif s == "engine":
                    r = section_engine(a, Path(tmp))
                else:
                    r = section_service(a)
            except Exception as exc:  # reported, not fatal: the other sections still run
                r = {"rc": "error", "tail": f"{type(exc).__name__}: {exc}"}
            summary["sections"][s] = r
            finish()
    line = finish()
    print(line)
    return 0 if summary["all_ok"] else 1


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds run(), which stops the running section's processes


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)
    sys.exit(main())
