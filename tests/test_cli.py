"""The `ponder` command line, as a user runs it: serve, ask, info, serve --demo."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from service_utils import Proc, wait_until, workers_alive

from ponder.proto.errors import InvalidArgument
from ponder.service.redis_server import free_port

ASK_OPTS = ["--budget", "2", "--max-steps", "2", "--max-step-tokens", "8", "--seed", "1"]


def ponder(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ponder.cli.main", *args], capture_output=True, text=True, timeout=timeout)


def test_serve_then_ask(tiny_llama_dir: Path) -> None:
    port, http, prom = free_port(), free_port(), free_port()
    serve = Proc("serve", ["serve", "--port", str(port), "--model", str(tiny_llama_dir), "--http", str(http),
                           "--metrics-port", str(prom)])
    try:
        wait_until(lambda: workers_alive(port) >= 1, 180, "ponder serve", [serve])
        # the OpenAI SDK against `ponder serve --http`: reasoning deltas, then the final chunk
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{http}/v1", api_key="-", max_retries=0)
        def gateway_up() -> bool:  # the gateway starts once serve has seen its workers
            try:
                return bool(client.models.list().data)
            except openai.APIConnectionError:
                return False

        wait_until(gateway_up, 30, "the gateway", [serve])
        chunks = list(client.chat.completions.create(
            model="ponder", stream=True, messages=[{"role": "user", "content": "What is 12 + 30?"}],
            extra_body={"generations": 2, "max_steps": 2, "max_step_tokens": 8, "seed": 1}))
        assert any((c.choices[0].delta.model_extra or {}).get("reasoning_content") for c in chunks if c.choices)
        assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage.completion_tokens > 0
        # the SDK keeps its connection open (keep-alive): stopping serve must not wait for it
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{prom}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'ponder_requests_total{code="OK",method="Solve"} 1.0' in text
        out = ponder("ask", "What is 12 + 30?", "--server", f"localhost:{port}", *ASK_OPTS)
        assert out.returncode == 0, out.stderr
        assert "queued as job" in out.stdout and "step #" in out.stdout
        assert "Answer:" in out.stdout and "Usage: 2 generations" in out.stdout

        out = ponder("ask", "What is 12 + 30?", "--server", f"localhost:{port}", "--json", *ASK_OPTS)
        assert out.returncode == 0, out.stderr
        events = [json.loads(line) for line in out.stdout.splitlines()]
        assert "queued" in events[0] and "final" in events[-1]
        assert int(events[-1]["final"]["usage"]["generations"]) == 2

        out = ponder("ask", "", "--server", f"localhost:{port}")
        assert out.returncode == 2 and "INVALID_ARGUMENT: question: must not be empty" in out.stderr

        out = ponder("info", "--server", f"localhost:{port}")
        info = json.loads(out.stdout)
        assert info["workers_alive"] == 1 and "best_of_n" in info["strategies"]
    finally:
        serve.signal(signal.SIGINT)  # Ctrl-C stops everything it started
        assert serve.proc.wait(60) == 0
        serve.stop()
    log = serve.log_path.read_text()
    assert "private Redis" in log and "shutting down" in log


def test_serve_demo_answers_one_question(tiny_llama_dir: Path) -> None:
    # the plain-transformers backend, end to end (the other tests run the default engine)
    out = ponder("serve", "--port", str(free_port()), "--model", str(tiny_llama_dir), "--backend", "hf",
                 "--demo", "What is 2 + 2?", "--budget", "2", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Answer:" in out.stdout and "step #" in out.stdout


def test_delegated_commands_keep_their_options() -> None:
    """``eval --dataset X`` starts with an option, which argparse's REMAINDER would refuse."""
    from ponder.cli.main import _parse

    ns = _parse(["eval", "--dataset", "d.jsonl", "--budgets", "4"])
    assert (ns.command, ns.rest, ns.verbose) == ("eval", ["--dataset", "d.jsonl", "--budgets", "4"], False)
    ns = _parse(["-v", "train", "policy", "--steps", "5"])
    assert (ns.command, ns.what, ns.rest, ns.verbose) == ("train", "policy", ["--steps", "5"], True)
    ns = _parse(["bench", "engine", "--json"])
    assert (ns.what, ns.rest) == ("engine", ["--json"])
    for bad in (["bench"], ["bench", "nope"], ["train", "--steps", "5"]):
        with pytest.raises(SystemExit) as exc:
            _parse(bad)
        assert exc.value.code == 2
    assert _parse(["info", "--server", "h:1"]).command == "info"


def test_serve_passes_the_plan_to_its_workers() -> None:
    from ponder.cli.main import build_parser
    from ponder.service.supervisor import worker_command

    args = build_parser().parse_args(["serve", "--plan", "/tmp/my-plan.json", "--verifier", "none"])
    cmd = worker_command(args)
    assert cmd[cmd.index("--plan") + 1] == "/tmp/my-plan.json"
    assert cmd[cmd.index("--verifier") + 1] == "none"


def test_render_marks_a_restarted_attempt() -> None:
    from ponder.clients.render import render
    from ponder.proto import pb

    first = render(pb.SolveEvent(job_id="j", started=pb.Started(attempt=1, model="m", plan="p")))
    again = render(pb.SolveEvent(job_id="j", started=pb.Started(
        attempt=2, model="m", plan="p", restart_reason="attempt 2: an earlier attempt's worker stopped")))
    assert "restart" not in first
    assert "↺ restart — attempt 2" in again and again.index("restart") < again.index("started on")


def test_redis_url_with_a_password_is_refused_on_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from ponder.cli.main import _redis_url, build_parser

    args = build_parser().parse_args(["worker", "--redis", "redis://:pw@127.0.0.1:1/0"])
    with pytest.raises(InvalidArgument) as info:
        _redis_url(args)
    assert info.value.field == "redis" and "pw" not in info.value.message
    monkeypatch.setenv("PONDER_REDIS_URL", "redis://:pw@127.0.0.1:1/0")  # from the environment: fine
    args = build_parser().parse_args(["worker"])
    assert _redis_url(args) == "redis://:pw@127.0.0.1:1/0"
