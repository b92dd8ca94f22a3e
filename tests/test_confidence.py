"""The confidence verifier: token log-probs from both policy backends (checked against a
teacher-forced recomputation), its features, its calibration file, and that it ranks samples the
way their probabilities say — through the real search loop."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from ponder.proto import pb
from ponder.proto.config import SolveConfig
from ponder.proto.errors import InvalidArgument
from ponder.workers.loop import SearchLoop
from ponder.workers.prm import load_verifier
from ponder.workers.prm.confidence import (
    FEATURES,
    Calibration,
    ConfidenceVerifier,
    calibration_path,
    features,
    model_fingerprint,
)
from ponder.training.calibration import Sample, fit_calibration
from ponder.workers.types import Node, Prompt, SamplingParams

from fakes import ScriptedPolicy, StepScript


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-conf"), "llama", ponder_json={"step_delimiter": "e"})


@pytest.mark.parametrize("backend", ["engine", "hf"])
def test_policies_return_the_log_prob_of_every_sampled_token(model_dir: Path, backend: str) -> None:
    from ponder.workers.engine import EngineConfig, EnginePolicy
    from ponder.workers.hf_policy import HFPolicy
    from ponder.workers.models import load_hf_model, resolve

    files = resolve(str(model_dir))
    hf = load_hf_model(files)
    policy = (
        EnginePolicy(files, model=hf, config=EngineConfig(block_size=4, max_kv_bytes=8 << 20))
        if backend == "engine" else HFPolicy(files, model=hf)
    )
    out = policy.prefill([Prompt("Compute 2 + 3.")])[0]
    root = Node(id=0, parent=None, depth=0, token_ids=out.token_ids, handle=out.handle)
    params = [SamplingParams(temperature=1.0, max_step_tokens=12), SamplingParams(temperature=0.0, max_step_tokens=12),
              SamplingParams(temperature=0.7, top_k=5, max_step_tokens=12)]
    steps = policy.expand([root] * 3, params, [1, 2, 3])
    for step in steps:
        assert len(step.logprobs) == len(step.token_ids) > 0
        ids = torch.tensor([out.token_ids + step.token_ids])
        with torch.no_grad():
            logits = hf(input_ids=ids).logits[0].float()  # (T, V)
        lp = torch.log_softmax(logits, -1)
        start = len(out.token_ids)
        # position t-1 predicts token t; the log-prob is under T=1, whatever the sampling settings
        want = [float(lp[start + i - 1, t]) for i, t in enumerate(step.token_ids)]
        assert step.logprobs == pytest.approx(want, abs=2e-4)
        assert all(x <= 0.0 for x in step.logprobs)
    policy.release([root])


def test_features_match_a_direct_computation() -> None:
    rng = random.Random(3)
    for n in (1, 2, 5, 17, 40):
        lps = [-rng.random() * 3 for _ in range(n)]
        newest = lps[-3:]
        for window, tail in ((1, 1), (4, 8), (8, 3), (50, 50)):
            got = features(lps, newest, window, tail)
            w = min(window, n)
            windows = [sum(lps[i : i + w]) / w for i in range(n - w + 1)]
            want = [sum(lps) / n, min(windows), sum(lps[-min(tail, n):]) / min(tail, n), min(lps),
                    sum(newest) / len(newest), n / 100]
            assert got == pytest.approx(want)
    assert len(features([], [], 4, 4)) == len(FEATURES)


def _calibration(**kw) -> Calibration:
    k = len(FEATURES)
    base = dict(model="m", fingerprint="f", window=4, tail=8, mean=(0.0,) * k, std=(1.0,) * k,
                weights=(2.0,) + (0.0,) * (k - 1), bias=1.0)
    base.update(kw)
    return Calibration(**base)


def test_calibration_round_trip_and_bad_files(tmp_path: Path) -> None:
    cal = _calibration(fit={"heldout": {"auc": 0.9}})
    cal.save(tmp_path / "c.json")
    back = Calibration.load(tmp_path / "c.json")
    assert back == cal
    x = [-0.5, -1.0, -0.7, -2.0, -0.4, 0.3]
    assert back.probability(x) == pytest.approx(1 / (1 + math.exp(-(1.0 + 2.0 * -0.5))))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    data = json.loads((tmp_path / "c.json").read_text())
    data["std"][0] = 0.0
    (tmp_path / "zero.json").write_text(json.dumps(data))
    for name in ("missing.json", "bad.json", "other.json", "zero.json"):
        with pytest.raises(InvalidArgument) as err:
            Calibration.load(tmp_path / name)
        assert err.value.field == "verifier"


def test_load_verifier_checks_the_calibration_belongs_to_the_model(model_dir: Path, tmp_path: Path) -> None:
    from ponder.workers.models import resolve

    files = resolve(str(model_dir))

    class P(ScriptedPolicy):
        pass

    policy = P()
    policy.files = files  # what EnginePolicy and HFPolicy carry
    # no calibration beside the model: uncalibrated, and said so in the name
    ver = load_verifier("confidence", policy)
    assert isinstance(ver, ConfidenceVerifier) and ver.calibration is None and "uncalibrated" in ver.name
    # a calibration for this model, beside it, is found; one for another model is refused
    _calibration(fingerprint=model_fingerprint(files)).save(calibration_path(files))
    try:
        ver = load_verifier("confidence", policy)
        assert ver.calibration is not None and ver.name == "confidence"
        _calibration(fingerprint="0123456789abcdef", model="other").save(tmp_path / "other.json")
        with pytest.raises(InvalidArgument) as err:
            load_verifier(f"confidence:{tmp_path / 'other.json'}", policy)
        assert err.value.field == "verifier" and "other" in err.value.message
        with pytest.raises(InvalidArgument):
            load_verifier(f"confidence:{tmp_path / 'absent.json'}", policy)
        assert load_verifier("confidence:uncalibrated", policy).calibration is None
    finally:
        calibration_path(files).unlink()


def test_build_verifier_auto_is_confidence_for_a_model_without_a_prm(model_dir: Path) -> None:
    from ponder.workers.runtime import build_verifier

    ver = build_verifier("auto", ScriptedPolicy(), str(model_dir))
    assert isinstance(ver, ConfidenceVerifier)


def test_weighted_vote_follows_the_token_probabilities_in_the_search_loop() -> None:
    """Samples answering 9 are sampled with confident tokens, those answering 7 with unsure
    ones; 7 is the majority, so majority voting picks 7 and confidence-weighted voting 9."""
    script = StepScript(steps=2, answers=("7", "9"), weights=(0.6, 0.4))
    lp = lambda text: -0.05 if "{9}" in text else (-3.0 if "{7}" in text else -0.5)  # noqa: E731
    policy = ScriptedPolicy(script, logprob_fn=lp)
    answers, votes = {}, {}
    for selection in ("majority", "weighted", "best"):
        finals = {}
        loop = SearchLoop(policy, ConfidenceVerifier(None), sink=lambda j, evs: finals.update(
            {j: e for e in evs if e.WhichOneof("kind") == "final"}))
        for i in range(6):
            cfg = SolveConfig(question=f"q{i}", strategy="best_of_n", generations=16, seed=i, selection=selection)
            loop.submit(f"{selection}-{i}", cfg.validate())
        loop.run_until_idle()
        answers[selection] = [finals[f"{selection}-{i}"].final.answer for i in range(6)]
        votes[selection] = [{v.answer: v.count for v in finals[f"{selection}-{i}"].final.votes} for i in range(6)]
    p9, p7 = math.exp((-0.5 - 0.05) / 2), math.exp((-0.5 - 3.0) / 2)  # exp(mean log-prob of the path)
    assert answers["majority"].count("7") >= 4
    assert answers["best"] == ["9"] * 6
    # the same seeds draw the same samples under every selection rule
    assert votes["weighted"] == votes["majority"]
    for answer, count in zip(answers["weighted"], votes["majority"]):
        assert answer == ("9" if count.get("9", 0) * p9 > count.get("7", 0) * p7 else "7")
    assert answers["weighted"].count("9") >= 5


def test_step_scores_cover_the_whole_path() -> None:
    """The last step's score reads every token of the solution, so `last` aggregation sees a
    slip made in an early step."""
    ver = ConfidenceVerifier(None)
    root = Node(id=0, parent=None, depth=0)
    slip = Node(id=1, parent=root, depth=1, logprobs=[-4.0] * 5)
    clean = Node(id=2, parent=root, depth=1, logprobs=[-0.1] * 5)
    a = Node(id=3, parent=slip, depth=2, logprobs=[-0.1] * 5)
    b = Node(id=4, parent=clean, depth=2, logprobs=[-0.1] * 5)
    out = ver.score([a, b], "last")
    assert out.scores[0] < out.scores[1]
    assert out.scores[1] == pytest.approx(math.exp(-0.1))
    assert all(0.0 <= s <= 1.0 for s in out.scores)


def _synthetic_samples(n_q: int, n: int, seed: int) -> list[Sample]:
    """Samples whose wrong answers carry one low-probability token (a slipped digit)."""
    rng = random.Random(seed)
    out = []
    for q in range(n_q):
        for _ in range(n):
            correct = rng.random() < 0.5
            root = Node(id=0, parent=None, depth=0)
            lps = [-rng.random() * 0.3 for _ in range(20)]
            if not correct:
                lps[rng.randrange(20)] = -3.0 - rng.random()
            s1 = Node(id=1, parent=root, depth=1, logprobs=lps[:12])
            s2 = Node(id=2, parent=s1, depth=2, logprobs=lps[12:])
            out.append(Sample(q, [s1, s2], correct))
    return out


def test_fit_calibration_separates_right_from_wrong_and_records_held_out_figures() -> None:
    cal = fit_calibration(_synthetic_samples(40, 6, 0), "synthetic", "f" * 16)
    held = cal.fit["heldout"]
    assert held["within_question_auc"] > 0.9
    assert 0.0 <= held["brier"] < 0.2
    assert cal.fit["train_questions"] == 30 and cal.fit["heldout_questions"] == 10
    assert {g["window"] for g in cal.fit["grid"]} >= {2, 32}
    ver = ConfidenceVerifier(cal)
    test = _synthetic_samples(20, 4, 1)
    p_right = [ver.probability(s.steps[-1]) for s in test if s.correct]
    p_wrong = [ver.probability(s.steps[-1]) for s in test if not s.correct]
    assert min(p_right) > max(p_wrong)


def test_fit_calibration_needs_both_outcomes() -> None:
    samples = [s for s in _synthetic_samples(10, 4, 2) if s.correct]
    with pytest.raises(InvalidArgument):
        fit_calibration(samples, "m", "f")


def test_confidence_streams_step_scores_like_a_prm() -> None:
    events: list[pb.SolveEvent] = []
    loop = SearchLoop(ScriptedPolicy(), ConfidenceVerifier(None), sink=lambda j, evs: events.extend(evs))
    loop.submit("j", SolveConfig(question="q", strategy="beam", generations=4, seed=1).validate())
    loop.run_until_idle()
    steps = [e.step for e in events if e.WhichOneof("kind") == "step"]
    assert steps and all(0.0 < s.score <= 1.0 for s in steps)
    assert any(e.WhichOneof("kind") == "final" for e in events)
    started = next(e.started for e in events if e.WhichOneof("kind") == "started")
    assert started.verifier == "confidence-uncalibrated"


def test_sample_paths_through_a_policy_grades_and_releases_everything() -> None:
    """`ponder train confidence` samples through the Policy interface (what a worker runs):
    n solutions per question, graded, every node released; the fit then ranks them."""
    from ponder.training.calibration import sample_paths

    script = StepScript(steps=3, answers=("7", "9"), weights=(0.5, 0.5))
    policy = ScriptedPolicy(script, logprob_fn=lambda text: -0.05 if "{7}" in text else (-2.5 if "{9}" in text else -0.3))
    questions = [f"q{i}" for i in range(12)]
    samples = sample_paths(policy, questions, ["7"] * 12, 6, SamplingParams(temperature=0.8), seed=1, rows=24)
    assert len(samples) == 72 and {s.question for s in samples} == set(range(12))
    assert all(len(s.steps) == 3 for s in samples)
    assert all(s.correct == ("{7}" in s.steps[-1].text) for s in samples)
    created = {n.id for call in policy.expand_calls for n in call} | {s.steps[-1].id for s in samples}
    assert created <= set(policy.released)  # nothing left holding policy state
    cal = fit_calibration(samples, "scripted", "f" * 16)
    assert cal.fit["heldout"]["within_question_auc"] == 1.0


def test_the_builtin_arith_model_defaults_to_the_calibrated_likelihood_verifier() -> None:
    """arith's default is arith-large judging its tokens, with the calibration shipped beside it;
    the calibrated confidence stays loadable by name."""
    from ponder.workers.models import resolve
    from ponder.workers.prm.likelihood import LikelihoodVerifier, pair_fingerprint
    from ponder.workers.runtime import build_verifier, verifier_spec

    files = resolve("arith")
    assert files.default_verifier == verifier_spec("auto", "arith") == "likelihood:arith-large"
    assert verifier_spec("confidence", "arith") == "confidence"
    policy = ScriptedPolicy()
    policy.files = files
    ver = build_verifier("auto", policy, "arith")
    assert isinstance(ver, LikelihoodVerifier) and ver.calibration is not None
    assert ver.calibration.fingerprint == pair_fingerprint(files, resolve("arith-large"))
    conf = build_verifier("confidence", policy, "arith")
    assert isinstance(conf, ConfidenceVerifier) and conf.calibration is not None
    assert conf.calibration.fingerprint == model_fingerprint(files)


def test_a_builtin_default_falls_back_when_its_calibration_or_judge_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the likelihood calibration (or without the judge) arith falls back to its
    confidence calibration, and without that to no default (the worker then builds an
    uncalibrated confidence verifier)."""
    import shutil

    from ponder.workers import models

    policy, judge = tmp_path / "policy", tmp_path / "judge"
    shutil.copytree(models.BUILTIN["arith"], policy)
    shutil.copytree(models.BUILTIN["arith-large"], judge)
    monkeypatch.setitem(models.BUILTIN, "arith", policy)
    monkeypatch.setitem(models.BUILTIN, "arith-large", judge)
    assert models.resolve("arith").default_verifier == "likelihood:arith-large"
    (judge / "config.json").rename(judge / "config.json.away")
    assert models.resolve("arith").default_verifier == "confidence"
    (judge / "config.json.away").rename(judge / "config.json")
    (policy / "likelihood-arith-large.json").unlink()
    assert models.resolve("arith").default_verifier == "confidence"
    (policy / "confidence.json").unlink()
    assert models.resolve("arith").default_verifier is None
