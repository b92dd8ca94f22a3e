"""Human-readable rendering of a job's events for the terminal (`ponder ask`)."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.json_format import MessageToDict


def event_json(event: Any) -> str:
    return json.dumps(MessageToDict(event, preserving_proto_field_name=True), ensure_ascii=False)


def _usage(u: Any) -> str:
    saved = f", {u.tokens_saved} tokens shared" if u.tokens_saved else ""
    return (
        f"{u.generations} generations, {u.prompt_tokens + u.decode_tokens + u.prm_tokens} tokens "
        f"({u.prompt_tokens} prefill, {u.decode_tokens} decode, {u.prm_tokens} PRM){saved}, "
        f"{u.flops / 1e9:.2f} GFLOPs"
    )


def _indent(text: str, pad: str = "    ") -> str:
    return "\n".join(pad + line for line in text.strip().splitlines()) or pad + "(empty)"


def _decision(d: Any) -> str:
    head = {"pilot": "pilot", "plan": "plan", "stop": "stop", "widen": "widen", "abandon": "abandon"}.get(d.kind, d.kind)
    stats = (f"{d.candidates} candidates, {d.spent}/{d.allowance} generations (nominal {d.nominal}), "
             f"leader {d.leader or '(none)'} {d.vote_share:.0%}, mean score {d.mean_score:.2f}")
    return f"◆ {head}: {d.reason or d.plan} [{stats}]"


def render(event: Any) -> str:
    kind = event.WhichOneof("kind")
    e = getattr(event, kind)
    if kind == "queued":
        return f"· queued as job {event.job_id} ({e.queue_depth} ahead)"
    if kind == "started":
        again = f", attempt {e.attempt}" if e.attempt > 1 else ""
        verifier = f" + {e.verifier}" if e.verifier else ""
        line = f"· started on {e.worker or 'a worker'} with {e.model}{verifier}: {e.plan}{again}"
        if e.restart_reason:  # the tree so far belongs to a lost attempt: start it over
            line = f"\n↺ {'─' * 60}\n↺ restart — {e.restart_reason}\n{line}"
        return line
    if kind == "step":
        score = f" score {e.score:.3f}" if e.HasField("score") else ""
        end = " ■" if e.finished else ""
        parent = "root" if e.parent_id < 0 else f"#{e.parent_id}"
        return f"  step #{e.node_id} ← {parent} (depth {e.depth}){score}{end}\n{_indent(e.text)}"
    if kind == "candidate":
        score = f" score {e.score:.3f}" if e.HasField("score") else ""
        return f"  ✓ candidate #{e.node_id}: answer {e.answer or '(none)'}{score}"
    if kind == "progress":
        return f"· best so far: {e.best_answer or '(none)'} ({e.vote_share:.0%} of votes) — {_usage(e.usage)}"
    if kind == "decision":
        return _decision(e)
    if kind == "final":
        votes = ", ".join(f"{v.answer}×{v.count}" for v in e.votes) or "none"
        stop = f" (stopped early: {e.stop_reason})" if e.stop_reason else ""
        low = " — low confidence: the controller gave up on this question" if e.low_confidence else ""
        spend = ""
        if e.nominal_generations:
            spend = f"Spent: {e.usage.generations} of a nominal {e.nominal_generations} generations"
            spend += f" ({e.usage.generations / e.nominal_generations:.0%})"
            spend += f", predicted difficulty bin {e.difficulty_bin} of 5\n" if e.difficulty_bin else "\n"
        return (
            f"\nAnswer: {e.answer or '(no answer found)'}{stop}{low}\n"
            f"Votes: {votes}\n"
            f"{spend}"
            f"Usage: {_usage(e.usage)}\n"
            f"Latency: {e.latency_s:.2f} s (queued {e.queue_s:.2f} s), strategy {e.strategy}"
        )
    if kind == "error":
        return f"✗ {e.code}: {e.message}"
    return f"? {kind}"
