"""`ponder eval` as a user drives it: every SolveConfig search option is a flag that reaches the
jobs, bad values stop it before anything runs, `--verifier auto` is the model's own verifier,
the whole dataset by default, the built-in `arith:` datasets, and an `--out` file from which
the selections can be recomputed without re-sampling."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from fakes import ScriptedPolicy, ScriptedVerifier, StepScript
from ponder.proto.config import SolveConfig
from ponder.proto.errors import InvalidArgument
from ponder.evaluation import evaluate as ev
from ponder.workers.answers import Candidate, is_correct, select
from ponder.workers.loop import SearchLoop
from ponder.tasks import arith

# A valid value, other than the default, for every search option (with --strategies best_of_n
# --budgets 4), small enough that the arith run stays short.
VALUES: dict[str, Any] = {
    "max_tokens": 400,
    "max_flops": 1e13,
    "temperature": 0.5,
    "top_p": 0.9,
    "top_k": 20,
    "beam_width": 2,
    "lookahead": 1,
    "max_steps": 3,
    "max_step_tokens": 24,
    "aggregation": "min",
    "selection": "majority",
    "sequential_ratio": 0.25,
    "timeout_s": 120.0,
    "budget_mode": "adaptive",
    "min_generations": 2,
    "max_generations": 8,
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def record_submits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, SolveConfig, float | None]]:
    seen: list[tuple[str, SolveConfig, float | None]] = []
    submit = SearchLoop.submit

    def spy(self: SearchLoop, job_id: str, config: SolveConfig, *, deadline: float | None = None) -> Any:
        seen.append((job_id, config, deadline))
        return submit(self, job_id, config, deadline=deadline)

    monkeypatch.setattr(SearchLoop, "submit", spy)
    return seen


def scripted_runtime(monkeypatch: pytest.MonkeyPatch, script: StepScript, verifier: bool = True) -> None:
    """`main` on the scripted fakes instead of a real model."""
    from ponder.workers import runtime

    monkeypatch.setattr(runtime, "build_policy", lambda model, backend="auto", device="cpu", dtype="float32": ScriptedPolicy(script))
    monkeypatch.setattr(runtime, "build_verifier", lambda spec, policy, model="": ScriptedVerifier() if verifier else None)
    monkeypatch.setattr(runtime, "set_threads", lambda threads, policy: 1)
    monkeypatch.setattr(runtime, "build_reviser", lambda spec, model, backend="auto", device="cpu", dtype="float32": None)


def test_every_search_option_is_a_flag() -> None:
    fields = {f.name for f in dataclasses.fields(SolveConfig)}
    # a new SolveConfig field becomes a flag unless it is named as not a search option
    assert set(ev.SEARCH_OPTIONS) == fields - ev.NOT_SEARCH_OPTIONS
    assert set(VALUES) == set(ev.SEARCH_OPTIONS)  # the test below covers every one
    defaults = {f.name: f.default for f in dataclasses.fields(SolveConfig)}
    assert all(VALUES[k] != defaults[k] for k in VALUES)
    args = ev._parser().parse_args(["--dataset", "x"])
    assert {k: getattr(args, k) for k in ev.SEARCH_OPTIONS} == {k: defaults[k] for k in ev.SEARCH_OPTIONS}
    # spelled as `ponder ask` spells them
    from ponder.cli.main import build_parser

    ask = build_parser()._subparsers._group_actions[0].choices["ask"]  # type: ignore[union-attr]
    ask_flags = {a.dest: set(a.option_strings) for a in ask._actions if a.dest in ev.SEARCH_OPTIONS}
    assert len(ask_flags) >= 10
    eval_flags = {a.dest: set(a.option_strings) for a in ev._parser()._actions}
    for dest, strings in ask_flags.items():
        assert strings == eval_flags[dest], dest


def test_search_options_reach_the_jobs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scripted_runtime(monkeypatch, StepScript(steps=2))
    seen = record_submits(monkeypatch)
    argv = ["--dataset", "arith:test:2", "--strategies", "best_of_n", "--budgets", "4", "--seed", "5",
            "--no-progress", "--out", str(tmp_path / "o.json")]
    for name, value in VALUES.items():
        argv += [flag(name), str(value)]
    assert ev.main(argv) == 0
    assert len(seen) == 2
    for i, (_, cfg, deadline) in enumerate(sorted(seen, key=lambda s: s[0])):
        assert {k: getattr(cfg, k) for k in VALUES} == VALUES
        assert (cfg.strategy, cfg.generations, cfg.seed) == ("best_of_n", 4, 5 + i)
        assert deadline is not None  # --timeout-s became the job's deadline
    saved = json.loads((tmp_path / "o.json").read_text())
    assert saved["options"] == VALUES


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (["--temperature", "3"], "options.temperature"),
        (["--top-p", "0"], "options.top_p"),
        (["--beam-width", "8"], "options.beam_width"),  # wider than the budget of 4
        (["--sequential-ratio", "1.5"], "options.sequential_ratio"),
        (["--max-tokens", "-1"], "budget.max_tokens"),
        (["--max-steps", "0"], "options.max_steps"),
        (["--timeout-s", "-1"], "timeout_s"),
        (["--budgets", "0"], "budget.generations"),
        (["--budgets", "4,x"], "budgets"),
        (["--strategies", "beam,nope"], "strategies"),
        (["--limit", "0"], "limit"),
        (["--dataset", "arith:dev"], "dataset"),
    ],
)
def test_bad_values_exit_2_naming_the_field_before_loading(
    extra: list[str], field: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ponder.workers import runtime

    def no_model(*a: Any, **k: Any) -> None:
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(runtime, "build_policy", no_model)
    rc = ev.main(["--dataset", "arith:test:2", "--strategies", "beam", "--budgets", "4", "--no-progress", *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"INVALID_ARGUMENT: {field}:" in err and "Traceback" not in err


def test_bad_choice_and_cli_delegation(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ev.main(["--dataset", "arith:test", "--aggregation", "bogus"])
    assert exc.value.code == 2 and "--aggregation" in capsys.readouterr().err
    from ponder.cli.main import main as cli_main

    assert cli_main(["eval", "--dataset", "arith:test", "--top-k", "-3"]) == 2
    assert "options.top_k" in capsys.readouterr().err


def test_verifier_auto_is_the_models_own_and_beam_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ponder.workers import runtime
    from ponder.workers.models import resolve

    assert ev._parser().parse_args(["--dataset", "x"]).verifier == "auto"
    assert ev._parser().parse_args(["--dataset", "x"]).model == runtime.DEFAULT_MODEL == "arith"
    assert resolve("arith").default_verifier is not None
    built: list[tuple[str, str, Any]] = []
    build_verifier = runtime.build_verifier

    def spy(spec: str, policy: Any, model: str = "") -> Any:
        built.append((spec, model, build_verifier(spec, policy, model)))
        return built[-1][2]

    monkeypatch.setattr(runtime, "build_verifier", spy)
    out = tmp_path / "o.json"
    # the defaults: --model arith --verifier auto
    assert ev.main(["--dataset", "arith:test:2", "--strategies", "beam", "--budgets", "4", "--max-steps", "8",
                    "--no-progress", "--out", str(out)]) == 0
    ((spec, model, verifier),) = built
    assert (spec, model) == ("auto", "arith") and verifier is not None  # arith's own (likelihood:arith-large)
    assert verifier.name == "likelihood:arith-large"
    saved = json.loads(out.read_text())
    assert saved["verifier"] == verifier.name
    (res,) = saved["results"]
    assert res["questions"] == 2 and res["failed"] == 0
    assert all(c["score"] is not None for a in res["answers"] for c in a["candidates"])  # the verifier scored them
    assert "failed:" not in capsys.readouterr().out


def test_failures_print_their_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    scripted_runtime(monkeypatch, StepScript(steps=2), verifier=False)
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": f"Q{i}?", "answer": "#### 7"} for i in range(3)])
    assert ev.main(["--dataset", str(data), "--verifier", "none", "--strategies", "best_of_n,beam",
                    "--budgets", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    below = out.split("beam N=2: 3 of 3 failed:", 1)
    assert len(below) == 2, out  # best_of_n needs no verifier and did not fail
    assert "verifier" in below[1].splitlines()[1]  # the message itself, not just the count


def test_limit_defaults_to_the_whole_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ev._parser().parse_args(["--dataset", "x"]).limit is None
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": f"Q{i}?", "answer": "#### 7"} for i in range(27)])
    scripted_runtime(monkeypatch, StepScript(steps=1))
    seen = record_submits(monkeypatch)
    assert ev.main(["--dataset", str(data), "--strategies", "best_of_n", "--budgets", "1", "--no-progress"]) == 0
    assert len(seen) == 27
    seen.clear()
    assert ev.main(["--dataset", str(data), "--strategies", "best_of_n", "--budgets", "1", "--limit", "5", "--no-progress"]) == 0
    assert [cfg.question for _, cfg, _ in seen] == [f"Q{i}?" for i in range(5)]


def test_arith_datasets() -> None:
    items = ev.load_dataset("arith:test:5")
    assert [(i.question, i.gold) for i in items] == [(q.question, q.answer) for q in arith.questions("test", 5, seed=0)]
    assert all(arith.split_of(i.question) == "test" for i in items)
    assert [i.question for i in ev.load_dataset("arith:test:5:3")] == [q.question for q in arith.questions("test", 5, seed=3)]
    assert len(ev.load_dataset("arith:test")) == ev.ARITH_DEFAULT_N == 200
    assert len(ev.load_dataset("arith:test", limit=4)) == 4
    assert ev.load_dataset("arith:validation:2")[0].question != items[0].question
    for bad in ("arith:dev", "arith:test:x", "arith:test:0", "arith:test:1:2:3", "arith:"):
        with pytest.raises(InvalidArgument):
            ev.load_dataset(bad)


def test_out_holds_candidates_to_recompute_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # answers drawn per sample, so majority, weighted and any-correct differ between questions
    scripted_runtime(monkeypatch, StepScript(steps=2, answers=("7", "9", "11"), weights=(0.4, 0.35, 0.25)))
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": f"Q{i}?", "answer": f"#### {g}"}
                                              for i, g in enumerate(["7", "9", "11", "7", "9", "7"])])
    out = tmp_path / "o.json"
    groups_on_disk: list[int] = []
    run_group = ev._run_group

    def spy(*a: Any, **k: Any) -> Any:  # what the file holds when each group starts
        groups_on_disk.append(len(json.loads(out.read_text())["results"]) if out.exists() else 0)
        return run_group(*a, **k)

    monkeypatch.setattr(ev, "_run_group", spy)
    argv = ["--dataset", str(data), "--strategies", "best_of_n,beam,revision", "--budgets", "8", "--no-progress",
            "--out", str(out)]
    assert ev.main([*argv, "--selection", "majority"]) == 0
    assert groups_on_disk == [0, 1, 2]  # the file is rewritten after every group
    saved = json.loads(out.read_text())
    by_attempt = saved["results"][2]["pass_at_1_by_attempt"]
    printed = [line for line in capsys.readouterr().out.splitlines() if "pass@1 by attempt" in line]
    assert printed == ["revision N=8: pass@1 by attempt " + " ".join(f"{k}:{v:.3f}" for k, v in enumerate(by_attempt, 1))]
    assert [(r["strategy"], r["budget"]) for r in saved["results"]] == [("best_of_n", 8), ("beam", 8), ("revision", 8)]
    for r in saved["results"]:
        assert len(r["answers"]) == 6 and r["failed"] == 0
        for a in r["answers"]:
            cands = a["candidates"]
            assert len(cands) == 8 == a["usage"]["generations"]
            assert all(set(c) >= {"answer", "score", "correct"} for c in cands)
            assert all(c["correct"] == is_correct(c["answer"], a["gold"]) for c in cands)
            # the selection recomputed from the file is the answer the run chose
            rebuilt = [Candidate(answer=c["answer"], solution="", score=c["score"]) for c in cands]
            assert select(rebuilt, "majority").answer == a["answer"]
            assert a["correct"] == is_correct(a["answer"], a["gold"])
            assert any(c["correct"] for c in cands) >= a["correct"]
            if r["strategy"] == "revision":
                assert [c["attempt"] for c in cands] == list(range(8))
        assert r["correct"] == sum(a["correct"] for a in r["answers"])
        assert r["generations"] == pytest.approx(sum(a["usage"]["generations"] for a in r["answers"]) / 6)
        if r["strategy"] == "revision":  # pass@1 of each attempt of the chains, over the questions
            assert r["pass_at_1_by_attempt"] == [
                pytest.approx(sum(a["candidates"][k]["correct"] for a in r["answers"]) / 6) for k in range(8)]
        else:  # no revisions, no per-attempt figures
            assert r["pass_at_1_by_attempt"] == []
    # the default selection with a verifier is weighted: same seeds, so the same candidates
    assert ev.main([*argv, "--strategies", "beam"]) == 0
    (beam,) = json.loads(out.read_text())["results"]
    beam_majority = saved["results"][1]
    for a, m in zip(beam["answers"], beam_majority["answers"]):
        assert a["candidates"] == m["candidates"]
        rebuilt = [Candidate(answer=c["answer"], solution="", score=c["score"]) for c in a["candidates"]]
        assert all(c.score is not None for c in rebuilt)
        assert select(rebuilt, "weighted").answer == a["answer"]
        # the majority run's answer, recomputed from the weighted run's file without re-sampling
        assert select(rebuilt, "majority").answer == m["answer"]
