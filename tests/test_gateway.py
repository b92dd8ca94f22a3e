"""The OpenAI-compatible gateway, driven by the official `openai` client: a real scheduler, a
real worker (the built-in arith model) and the gateway as processes, over loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request

import openai
import pytest
from service_utils import Proc, start_scheduler, wait_until, workers_alive

from ponder.clients.client import Client
from ponder.service.redis_server import free_port

QUICK = {"strategy": "best_of_n", "generations": 2, "max_steps": 3, "seed": 1}


@pytest.fixture(scope="module")
def gateway(redis_url: str) -> Iterator[tuple[str, int]]:
    prefix = f"g{uuid.uuid4().hex[:8]}"
    sched, port = start_scheduler(redis_url, prefix)
    worker = Proc("worker", ["worker", "--redis", redis_url, "--prefix", prefix, "--model", "arith", "--threads", "1"])
    http = free_port()
    gw = Proc("gateway", ["gateway", "--server", f"127.0.0.1:{port}", "--port", str(http)])
    try:
        wait_until(lambda: workers_alive(port) >= 1, 120, "the worker", [sched, worker])

        def up() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(up, 60, "the gateway", [gw])
        yield f"http://127.0.0.1:{http}/v1", port
    finally:
        for p in (gw, worker, sched):
            p.stop()


def client(base: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key="unused", max_retries=0, **kw)


def test_models_and_a_plain_completion(gateway: tuple[str, int]) -> None:
    base, _ = gateway
    c = client(base)
    assert {"ponder", "arith"} <= {m.id for m in c.models.list().data}
    r = c.chat.completions.create(model="arith", messages=[{"role": "user", "content": "Compute 2 + 3 * 4."}],
                                  temperature=0.8, extra_body=QUICK)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "stop" and msg.content  # the final answer
    assert msg.model_extra["reasoning_content"]  # the chosen solution's steps
    extra = r.model_extra["ponder"]
    assert extra["job_id"] in r.id and extra["strategy"] == "best_of_n"
    assert r.usage.completion_tokens > 0 and r.usage.model_extra["ponder"]["generations"] == 2


def test_streaming_sends_steps_as_reasoning_then_the_answer(gateway: tuple[str, int]) -> None:
    base, _ = gateway
    stream = client(base).chat.completions.create(
        model="ponder", messages=[{"role": "user", "content": "Compute 7 - 2 + 5."}], stream=True, extra_body=QUICK)
    reasoning, content, scores, usage, finish = [], [], [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta.model_extra or {}
            if delta.get("reasoning_content"):
                reasoning.append(delta["reasoning_content"])
                scores.append(delta["ponder"].get("score"))
            if choice.delta.content:
                content.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert reasoning and len(content) == 1 and finish == "stop"
    assert any(s is not None for s in scores)  # PRM (confidence) scores ride along
    assert usage is not None and usage.completion_tokens > 0


def test_bad_requests_are_400_naming_the_field(gateway: tuple[str, int]) -> None:
    base, _ = gateway
    c = client(base)
    for extra, field in (({"generations": 0}, "budget.generations"), ({"strategy": "magic"}, "strategy"),
                         ({"bogus_option": 1}, "bogus_option")):
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(model="ponder", messages=[{"role": "user", "content": "1+1"}], extra_body=extra)
        assert info.value.status_code == 400 and field in str(info.value)
    req = urllib.request.Request(f"{base}/chat/completions", data=b"not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400 and json.loads(err.value.read())["error"]["message"].startswith("request:")


def test_a_client_that_disconnects_mid_stream_cancels_its_job(gateway: tuple[str, int]) -> None:
    base, port = gateway
    stream = client(base).chat.completions.create(
        model="ponder", messages=[{"role": "user", "content": "Compute 9 * 8 - 7 + 6 * 5."}], stream=True,
        extra_body={"strategy": "best_of_n", "generations": 64, "max_steps": 12, "seed": 2})
    first = next(iter(stream))
    job_id = first.choices[0].delta.model_extra["ponder"]["job_id"]
    stream.close()  # the HTTP client goes away mid-stream
    with Client(f"127.0.0.1:{port}") as c:
        wait_until(lambda: c.result(job_id).state in ("cancelled", "done"), 30, "the job to stop")
        assert c.result(job_id).state == "cancelled"


# -- the live view ---------------------------------------------------------------------------


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_the_live_views_feed_is_the_jobs_events_as_sse(gateway: tuple[str, int]) -> None:
    base, _ = gateway
    root = base.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/view", timeout=10) as r:
        page = r.read().decode()
    assert r.headers["Content-Type"].startswith("text/html") and "EventSource" in page
    job = _post(f"{base}/jobs", {"question": "Compute 4 + 5 * 2.", "strategy": "beam", "generations": 4,
                                 "max_steps": 4, "seed": 3})["job_id"]
    events = []
    with urllib.request.urlopen(f"{base}/jobs/{job}/events", timeout=60) as r:
        for line in r:
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
    kinds = [next(k for k in ("queued", "started", "step", "candidate", "progress", "decision", "final", "error")
                  if k in e) for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "final" and "step" in kinds
    steps = [e["step"] for e in events if "step" in e]
    ids = {s["node_id"] for s in steps}
    assert all(str(s.get("parent_id", "-1")) == "-1" or s["parent_id"] in ids for s in steps)  # a tree
    with pytest.raises(urllib.error.HTTPError) as err:
        _post(f"{base}/jobs", {"question": "1+1", "budget": 3})
    assert err.value.code == 400 and "budget" in json.loads(err.value.read())["error"]["message"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_the_live_view_in_a_real_headless_browser(gateway: tuple[str, int]) -> None:
    base, _ = gateway
    url = base.removesuffix("/v1") + "/view?q=Compute%207%20-%202%20%2B%205.&strategy=beam&generations=4"
    out = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=120)
    dom = out.stdout
    assert 'data-state="done"' in dom, out.stderr[-2000:]  # the page asked, watched, and saw the final
    assert re.search(r'class="answer">Answer: \d+', dom)
    assert dom.count('class="node') >= 4 and 'node candidate' in dom  # the tree, candidates marked
    assert "generations" in dom  # the usage line
