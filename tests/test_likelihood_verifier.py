"""The likelihood verifier (a judge model rescoring the policy's tokens): its incremental scores
equal a teacher-forced forward of the judge, whatever was cached or released; bad specs fail at
load naming the field; it runs in the real search loop; `ponder train likelihood` fits a
calibration the worker then loads (and refuses for another pair)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from ponder.proto import pb
from ponder.proto.config import SolveConfig
from ponder.proto.errors import InvalidArgument
from ponder.workers.loop import SearchLoop
from ponder.workers.prm import load_verifier
from ponder.workers.prm.likelihood import FEATURES, LikelihoodVerifier, features
from ponder.workers.types import Node, Prompt, SamplingParams


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny policy and a tiny judge (another seed, one more layer) sharing the byte tokenizer."""
    from tiny_models import make_tiny_model

    root = tmp_path_factory.mktemp("lk")
    policy = make_tiny_model(root / "policy", "llama", seed=0, ponder_json={"step_delimiter": "e"})
    judge = make_tiny_model(root / "judge", "llama", seed=1, num_hidden_layers=3)
    return policy, judge


def _policy(path: Path):  # type: ignore[no-untyped-def]
    from ponder.workers.engine import EngineConfig, EnginePolicy
    from ponder.workers.models import resolve

    return EnginePolicy(resolve(str(path)), config=EngineConfig(block_size=4, max_kv_bytes=16 << 20))


def _tree(policy, seed: int = 0) -> list[list[Node]]:  # type: ignore[no-untyped-def]
    """Two questions, two chains of three steps each, sampled for real; per depth, its nodes."""
    outs = policy.prefill([Prompt("Compute 2 + 3."), Prompt("Compute 7 * 8 - 1.")])
    roots = [Node(id=i, parent=None, depth=0, token_ids=o.token_ids, handle=o.handle,
                  prompt=Prompt(q)) for i, (o, q) in enumerate(zip(outs, ["Compute 2 + 3.", "Compute 7 * 8 - 1."]))]
    levels, live, nid = [], [r for r in roots for _ in range(2)], 10
    for depth in range(3):
        steps = policy.expand(live, [SamplingParams(temperature=1.0, max_step_tokens=6)] * len(live),
                              [seed * 100 + nid + k for k in range(len(live))])
        kids = []
        for parent, o in zip(live, steps):
            kids.append(Node(id=nid, parent=parent, depth=depth + 1, text=o.text, token_ids=o.token_ids,
                             handle=o.handle, logprobs=o.logprobs))
            nid += 1
        levels.append(kids)
        live = kids
    return levels


def _teacher_forced(judge_lm, leaf: Node) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    """The judge's log-prob of each solution token and its gap (minus the best token's log-prob)."""
    path = leaf.path()
    prompt = path[0].parent.token_ids  # type: ignore[union-attr]
    sol = [t for st in path for t in st.token_ids]
    with torch.no_grad():
        logits = judge_lm(input_ids=torch.tensor([prompt + sol])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    rows = [lp[len(prompt) + i - 1] for i in range(len(sol))]
    return [float(r[t]) for r, t in zip(rows, sol)], [float(r[t] - r.max()) for r, t in zip(rows, sol)]


def test_incremental_scores_equal_a_teacher_forced_judge(pair: tuple[Path, Path]) -> None:
    policy_dir, judge_dir = pair
    policy = _policy(policy_dir)
    ver = load_verifier(f"likelihood:{judge_dir}:uncalibrated", policy)
    assert isinstance(ver, LikelihoodVerifier) and ver.calibration is None
    levels = _tree(policy)
    # depth 1 scored; depth 2 of the first chain released before its child is scored (the child
    # then extends the depth-1 cache); the second level of the other chains never scored at all
    out1 = ver.score(levels[0], "min")
    ver.score(levels[1][:2], "min")
    ver.release(levels[1][:1])
    out3 = ver.score(levels[2], "min")
    for leaf, score in zip(levels[2], out3.scores):
        want, want_gaps = _teacher_forced(ver.judge, leaf)
        assert leaf.verifier_state.logprobs == pytest.approx(want, abs=1e-4)
        assert leaf.verifier_state.gaps == pytest.approx(want_gaps, abs=1e-4)
        assert all(g <= 0.0 for g in leaf.verifier_state.gaps)
        own = [lp for st in leaf.path() for lp in st.logprobs]
        x = features(own, want, want_gaps, len(leaf.logprobs), ver.window)
        assert score == pytest.approx(float(torch.tensor(x[3]).exp()), rel=1e-4)  # uncalibrated: exp(judge mean)
        assert 0.0 < score <= 1.0
    # FLOPs: 2·P_judge per token the judge read: each question's prompt once (its two samples
    # share it), then each step once
    roots = {id(n.parent): n.parent for n in levels[0]}
    assert len(roots) == 2 and all(r.verifier_state is not None for r in roots.values())  # type: ignore[union-attr]
    assert out1.prm_tokens == sum(len(r.token_ids) for r in roots.values()) + sum(len(n.token_ids) for n in levels[0])  # type: ignore[union-attr]
    assert out1.flops == pytest.approx(2.0 * ver.n_params * out1.prm_tokens)
    ver.release([n for lvl in levels for n in lvl])
    assert all(n.verifier_state is None for lvl in levels for n in lvl)


def test_a_revision_is_judged_after_the_plain_question(pair: tuple[Path, Path]) -> None:
    """The judge reads a revision root (earlier attempts in its prompt) as the plain question's
    prompt: the same steps score the same under both roots, and the attempts are not read."""
    policy_dir, judge_dir = pair
    policy = _policy(policy_dir)
    ver = load_verifier(f"likelihood:{judge_dir}:uncalibrated", policy)
    q = "Compute 2 + 3."
    revised = Prompt(q, attempts=("Compute 2 + 3 = 6. The answer is 6.", "2 + 3 = 4"))
    plain_ids, revised_ids = policy.encode(policy.format_prompt(Prompt(q))), policy.encode(policy.format_prompt(revised))
    assert len(revised_ids) > len(plain_ids)
    roots = [Node(id=0, parent=None, depth=0, token_ids=plain_ids, prompt=Prompt(q)),
             Node(id=1, parent=None, depth=0, token_ids=revised_ids, prompt=revised)]
    step = policy.encode("2 + 3 = 5e")
    kids = [Node(id=2 + i, parent=r, depth=1, token_ids=step, logprobs=[-0.5] * len(step)) for i, r in enumerate(roots)]
    outs = [ver.score([k], "last") for k in kids]
    assert kids[1].verifier_state.logprobs == pytest.approx(kids[0].verifier_state.logprobs, abs=1e-5)
    assert outs[1].scores == pytest.approx(outs[0].scores, abs=1e-6)
    assert outs[0].prm_tokens == outs[1].prm_tokens == len(plain_ids) + len(step)


def test_the_judge_runs_on_its_own_threads_and_gives_them_back(pair: tuple[Path, Path]) -> None:
    """The judge's forward runs with its thread count (never fewer than the caller's), the
    caller's count is restored afterwards, and the scores do not depend on it."""
    policy_dir, judge_dir = pair
    policy = _policy(policy_dir)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scores = []
        for threads in (1, 2):
            ver = load_verifier(f"likelihood:{judge_dir}:uncalibrated", policy)
            ver.threads = threads
            seen: list[int] = []
            run = ver.runner.run
            ver.runner.run = lambda rows, run=run: (seen.append(torch.get_num_threads()), run(rows))[1]  # type: ignore[method-assign]
            scores.append(ver.score(_tree(policy)[0], "last").scores)
            assert seen and set(seen) == {threads} and torch.get_num_threads() == 1
        assert scores[1] == pytest.approx(scores[0], abs=1e-6)
    finally:
        torch.set_num_threads(before)


def test_features_match_a_direct_computation() -> None:
    rng = random.Random(5)
    own = [-rng.random() * 2 for _ in range(9)]
    judge = [-rng.random() * 2 for _ in range(9)]
    gaps = [0.0, -0.5, 0.0, -3.0, 0.0, -1.0, 0.0, 0.0, -0.2]
    x = dict(zip(FEATURES, features(own, judge, gaps, 3, 4)))
    r = [j - o for j, o in zip(judge, own)]
    assert x["ratio_mean"] == pytest.approx(sum(r) / 9)
    assert x["ratio_min"] == pytest.approx(min(r))
    assert x["ratio_window_min"] == pytest.approx(min(sum(r[i:i + 4]) / 4 for i in range(6)))
    assert x["judge_min"] == pytest.approx(min(judge)) and x["own_mean"] == pytest.approx(sum(own) / 9)
    assert x["step_ratio_min"] == pytest.approx(min(r[-3:]))
    assert x["length"] == pytest.approx(0.09)
    assert (x["gap_min"], x["gap_2nd"]) == (-3.0, -1.0)
    # one token: the second-lowest gap is 0 (no second departure from the judge's choice)
    y = dict(zip(FEATURES, features([-1.0], [-2.0], [-0.7], 1, 4)))
    assert (y["gap_min"], y["gap_2nd"]) == (-0.7, 0.0)
    assert features([], [], [], 0, 4) == [0.0] * len(FEATURES)


def test_bad_specs_fail_at_load_naming_the_field(pair: tuple[Path, Path], tmp_path: Path) -> None:
    from tiny_models import make_tiny_model

    policy_dir, judge_dir = pair
    policy = _policy(policy_dir)
    for spec, words in [
        ("likelihood", "needs a judge"),
        ("likelihood:", "needs a judge"),
        ("likelihood:no-such-model", "no-such-model"),
        (f"likelihood:{judge_dir}:{tmp_path / 'missing.json'}", "does not exist"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            load_verifier(spec, policy)
        assert info.value.field == "verifier" and words in info.value.message, (spec, info.value.message)
    # a judge with another tokenizer cannot read the policy's token ids, nor one whose output
    # layer is smaller than the policy's vocabulary
    from tiny_models import byte_tokenizer

    other = make_tiny_model(tmp_path / "other", "llama", vocab_size=300)
    tok = byte_tokenizer()
    tok.add_tokens(["Compute"])
    tok.save_pretrained(str(other))
    with pytest.raises(InvalidArgument, match="260 tokens.*tokenizer"):
        load_verifier(f"likelihood:{other}", policy)
    small = make_tiny_model(tmp_path / "small", "llama", vocab_size=200)
    with pytest.raises(InvalidArgument, match="200"):
        load_verifier(f"likelihood:{small}", policy)
    # a confidence calibration is not a likelihood calibration
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"format": "ponder-confidence"}))
    with pytest.raises(InvalidArgument, match="not a likelihood calibration"):
        load_verifier(f"likelihood:{judge_dir}:{conf}", policy)
    # a calibration fitted before the gap features existed names the command that refits it
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format": "ponder-likelihood", "features": list(FEATURES[:-2])}))
    with pytest.raises(InvalidArgument, match="refit it with `ponder train likelihood`"):
        load_verifier(f"likelihood:{judge_dir}:{old}", policy)


def test_it_drives_beam_search_in_the_real_loop(pair: tuple[Path, Path]) -> None:
    policy_dir, judge_dir = pair
    policy = _policy(policy_dir)
    ver = load_verifier(f"likelihood:{judge_dir}", policy)  # no calibration beside it: uncalibrated
    assert ver.name == f"likelihood:{judge_dir}:uncalibrated"
    events: list[pb.Event] = []
    loop = SearchLoop(policy, ver, sink=lambda j, evs: events.extend(evs))
    loop.submit("j1", SolveConfig(question="Compute 2 + 3.", strategy="beam", generations=4, beam_width=2,
                                  max_steps=3, max_step_tokens=6, seed=3).validate())
    loop.run_until_idle()
    finals = [e for e in events if e.WhichOneof("kind") == "final"]
    steps = [e for e in events if e.WhichOneof("kind") == "step"]
    assert len(finals) == 1 and steps
    assert all(0.0 < e.step.score <= 1.0 for e in steps)
    usage = finals[0].final.usage
    assert usage.prm_tokens > 0  # the judge read the paths; its FLOPs are in the total
    assert usage.flops > 2.0 * policy.n_params * usage.decode_tokens
    started = next(e.started for e in events if e.WhichOneof("kind") == "started")
    assert started.verifier == f"likelihood:{judge_dir}:uncalibrated"


def _synthetic_pool(seed: int = 0) -> list:  # type: ignore[type-arg]
    """40 questions × 6 samples: a wrong sample holds one token the judge finds unlikely (its
    judge_min is low); harder questions (more wrong samples) also have a lower policy mean, a
    cross-question signal that says nothing about which sample of a question is right."""
    from ponder.training.likelihood import PoolRow

    rng = random.Random(seed)
    rows = []
    for q in range(40):
        p_right = rng.random()
        for _ in range(6):
            right = rng.random() < p_right
            own = [[-0.3 * (1 - p_right) - rng.random() * 0.2 for _ in range(5)] for _ in range(3)]
            judge = [[o + rng.gauss(0, 0.1) for o in step] for step in own]
            # a few harmless departures from the judge's choice in every kind of sample
            gaps = [[-0.3 * rng.random() if rng.random() < 0.2 else 0.0 for _ in range(5)] for _ in range(3)]
            if not right:
                s, t = rng.randrange(3), rng.randrange(5)
                judge[s][t] -= 2.0 + rng.random()
                gaps[s][t] = judge[s][t]
            rows.append(PoolRow(q, right, own, judge, gaps))
    return rows


def test_fit_chooses_by_cross_validated_ranking_and_calibrates_monotonically(tmp_path: Path) -> None:
    from ponder.training.likelihood import fit, load_pool, prefix_features, save_pool, within_auc

    rows = _synthetic_pool()
    cal = fit(rows, "p+j", "fp")
    chosen = cal.fit["chosen"]
    assert chosen["cv_within_question_auc"] == max(g["cv_within_question_auc"] for g in cal.fit["grid"])
    assert chosen["cv_within_question_auc"] > 0.95 and within_auc(cal, rows) > 0.95
    assert cal.fit["single_feature_within_question_auc"]["judge_min"] > 0.95
    # weights outside the chosen features are zero; P(correct) rises with judge_min
    for name, w in zip(FEATURES, cal.weights):
        assert (w == 0.0) == (name not in chosen["features"])
    x = prefix_features(rows[0], cal.window)[-1]
    lo, hi = list(x), list(x)
    lo[FEATURES.index("judge_min")] -= 3.0
    assert cal.probability(lo) < cal.probability(hi)
    # a pool round-trips, with how it was drawn
    save_pool(rows, tmp_path / "pool.json", {"dataset": "synthetic", "seed": 0})
    back, meta = load_pool(tmp_path / "pool.json")
    assert back == rows and meta == {"dataset": "synthetic", "seed": 0}
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InvalidArgument, match="not a likelihood pool"):
        load_pool(tmp_path / "bad.json")
    # a pool written before gaps were recorded is refused, saying what to do
    old = json.loads((tmp_path / "pool.json").read_text())
    for r in old["rows"]:
        del r["gaps"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(InvalidArgument, match="sample it again"):
        load_pool(tmp_path / "old.json")


def test_train_likelihood_fits_a_calibration_the_worker_loads(tmp_path: Path) -> None:
    from ponder.training.likelihood import main
    from ponder.workers.runtime import build_policy

    out, pool = tmp_path / "likelihood-arith-large.json", tmp_path / "pool.json"
    assert main(["--model", "arith", "--judge", "arith-large", "--dataset", "arith:validation:12",
                 "--samples", "3", "--out", str(out), "--save-pool", str(pool)]) == 0
    data = json.loads(out.read_text())
    assert data["format"] == "ponder-likelihood" and data["features"] == list(FEATURES)
    assert data["model"] == "arith+arith-large"
    assert 0.0 <= data["fit"]["chosen"]["cv_within_question_auc"] <= 1.0
    assert set(data["fit"]["single_feature_within_question_auc"]) == set(FEATURES) - {"length"}
    policy = build_policy("arith")
    ver = load_verifier(f"likelihood:arith-large:{out}", policy)
    assert ver.name == "likelihood:arith-large" and ver.calibration is not None
    # the same file for another pair (the judge as policy) is refused, naming the refit command
    with pytest.raises(InvalidArgument, match="ponder train likelihood"):
        load_verifier(f"likelihood:arith-large:{out}", build_policy("arith-large"))
    # a refit from the saved pool gives the same calibration, and keeps how the pool was drawn
    again = tmp_path / "again.json"
    assert main(["--pool", str(pool), "--out", str(again)]) == 0
    redo = json.loads(again.read_text())
    assert redo["weights"] == pytest.approx(data["weights"]) and redo["bias"] == pytest.approx(data["bias"])
    assert redo["fit"]["dataset"] == "arith:validation:12" and redo["fit"]["samples_per_question"] == 3
