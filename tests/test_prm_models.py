"""Separate PRM models (Qwen2.5-Math-PRM and Math-Shepherd layouts, step and outcome modes) on
tiny random checkpoints built here, against a direct transformers computation of the same
score over the whole text; incremental scoring must process only each step's new tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ponder.proto.errors import InvalidArgument
from ponder.workers.prm.model_prm import QWEN_PROMPT, ModelPRM, load_prm
from ponder.workers.types import Node, Prompt
from ponder.workers.verifier import aggregate

QUESTION = "What is 2 + 3?"


def make_qwen_prm(path: Path, *, with_separator: bool = True) -> Path:
    from safetensors.torch import save_file
    from transformers import Qwen2Model

    from tiny_models import byte_tokenizer, tiny_config

    tok = byte_tokenizer()
    if with_separator:
        tok.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    cfg = tiny_config("qwen2", vocab_size=len(tok))
    cfg.architectures = ["Qwen2ForProcessRewardModel"]
    torch.manual_seed(1)
    base = Qwen2Model(cfg)
    score = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    torch.nn.init.normal_(score[2].weight, std=1.0)  # spread the scores away from 0.5
    tensors = {f"model.{k}": v for k, v in base.state_dict().items()}
    tensors |= {f"score.{k}": v for k, v in score.state_dict().items()}
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def make_shepherd_prm(path: Path, *, with_tag: bool = True) -> Path:
    from tiny_models import byte_tokenizer, make_tiny_model

    tok = byte_tokenizer()
    if with_tag:
        tok.add_tokens(["ки"])
    make_tiny_model(path, "llama", seed=2, vocab_size=len(tok))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_qwen_prm(tmp_path_factory.mktemp("qwen-prm"))


@pytest.fixture(scope="module")
def shepherd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shepherd_prm(tmp_path_factory.mktemp("shepherd-prm"))


# -- the direct computation ------------------------------------------------------------------


def reference_scores(path: Path, layout: str, question: str, steps: list[str], mode: str = "step") -> list[float]:
    """Scores of every step (step mode) or of the whole solution (outcome: one score), from one
    plain forward over the full text."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Model

    tok = AutoTokenizer.from_pretrained(str(path))
    if layout == "qwen":
        prompt, suffix, tag = QWEN_PROMPT.format(question=question), "<extra_0>", "<extra_0>"
    else:
        prompt, suffix, tag = f"{question} ", " ки\n", "ки"
    if mode == "step":
        text = prompt + "".join(s.strip() + suffix for s in steps)
    else:
        text = prompt + "\n\n".join(s.strip() for s in steps) + suffix
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    tag_id = tok.convert_tokens_to_ids(tag)
    at = (ids[0] == tag_id).nonzero().flatten()
    with torch.no_grad():
        if layout == "qwen":
            hidden = Qwen2Model.from_pretrained(str(path))(input_ids=ids).last_hidden_state[0]  # (T, D)
            w = load_file(str(path / "model.safetensors"))
            h = torch.relu(hidden[at] @ w["score.0.weight"].T + w["score.0.bias"])
            logits = h @ w["score.2.weight"].T + w["score.2.bias"]  # (S, 2)
            probs = torch.softmax(logits, dim=-1)[:, 1]
        else:
            logits = AutoModelForCausalLM.from_pretrained(str(path))(input_ids=ids).logits[0]  # (T, V)
            pm = [tok.convert_tokens_to_ids(t) for t in ("+", "-")]
            probs = torch.softmax(logits[at][:, pm], dim=-1)[:, 0]
    return probs.tolist()


# -- a small tree ----------------------------------------------------------------------------

STEPS = {
    "a1": "Step 1: add the numbers.\n\n",
    "a2": "First, 2 plus 3.\n\n",
    "b1": "2 + 3 = 5.\n\n",
    "b2": "That makes 6.\n\n",
    "c1": "We get five.\n\n",
    "d1": "The answer is \\boxed{5}.",
}


def tree() -> dict[str, Node]:
    root = Node(id=0, parent=None, depth=0, text="(prompt)", prompt=Prompt(QUESTION))
    n: dict[str, Node] = {"root": root}
    parents = {"a1": "root", "a2": "root", "b1": "a1", "b2": "a1", "c1": "a2", "d1": "b1"}
    for i, (name, text) in enumerate(STEPS.items()):
        par = n[parents[name]]
        n[name] = Node(id=i + 1, parent=par, depth=par.depth + 1, text=text)
    return n


def path_steps(node: Node) -> list[str]:
    return [s.text for s in node.path()]


def score_like_the_loop(prm: ModelPRM, nodes: list[Node], mode: str) -> tuple[list[float], int]:
    for node in nodes:  # the loop hands a child its parent's aggregate before scoring
        node.aggregate, node.n_scored = node.parent.aggregate, node.parent.n_scored  # type: ignore[union-attr]
    out = prm.score(nodes, mode)
    for node, s, a in zip(nodes, out.scores, out.aggregates):
        node.score, node.aggregate, node.n_scored = s, a, node.n_scored + 1
    assert out.flops == pytest.approx(2.0 * prm.n_params * out.prm_tokens)
    return out.scores, out.prm_tokens


@pytest.mark.parametrize("layout", ["qwen", "shepherd"])
def test_step_scores_match_a_full_forward_and_cost_only_new_tokens(layout: str, qwen_dir: Path, shepherd_dir: Path) -> None:
    path = qwen_dir if layout == "qwen" else shepherd_dir
    prm = load_prm(path)
    assert prm.fmt.layout == layout
    n = tree()
    rounds = [["a1", "a2"], ["b1", "b2", "c1"], ["d1"]]
    all_scores: dict[str, float] = {}
    for names in rounds:
        scores, tokens = score_like_the_loop(prm, [n[x] for x in names], "min")
        all_scores |= dict(zip(names, scores))
        new_tokens = sum(len(prm.step_ids(n[x])) for x in names)
        if names != rounds[0]:  # the parents' caches are reused: only the new steps run
            assert tokens == new_tokens
        else:
            assert tokens == new_tokens + 2 * len(prm.prompt_ids(n["a1"]))
    for name in STEPS:
        ref = reference_scores(path, layout, QUESTION, path_steps(n[name]))
        assert all_scores[name] == pytest.approx(ref[-1], abs=1e-4)
        want: float | None = None
        for i, s in enumerate(ref):  # the path's running "min" aggregate
            want = aggregate(want, i, s, "min")
        assert n[name].aggregate == pytest.approx(want, abs=1e-4)
    assert len({round(s, 4) for s in all_scores.values()}) > 3  # the scores really differ


@pytest.mark.parametrize("layout", ["qwen", "shepherd"])
def test_released_or_unscored_ancestors_are_recomputed(layout: str, qwen_dir: Path, shepherd_dir: Path) -> None:
    path = qwen_dir if layout == "qwen" else shepherd_dir
    prm = load_prm(path)
    n = tree()
    score_like_the_loop(prm, [n["a1"]], "last")
    prm.release([n["a1"]])
    assert n["a1"].verifier_state is None
    # d1's ancestors b1 and a1 hold no cache: the PRM runs root → d1 in one row (as lookahead does)
    scores, tokens = score_like_the_loop(prm, [n["d1"]], "last")
    ref = reference_scores(path, layout, QUESTION, path_steps(n["d1"]))
    assert scores[0] == pytest.approx(ref[-1], abs=1e-4)
    assert tokens == len(prm.prompt_ids(n["d1"])) + sum(len(prm.step_ids(s)) for s in n["d1"].path())


@pytest.mark.parametrize("layout", ["qwen", "shepherd"])
def test_outcome_mode_scores_the_whole_solution(layout: str, qwen_dir: Path, shepherd_dir: Path) -> None:
    path = qwen_dir if layout == "qwen" else shepherd_dir
    prm = load_prm(path, mode="outcome")
    n = tree()
    for names in (["a1", "a2"], ["b1", "b2", "c1"], ["d1"]):
        score_like_the_loop(prm, [n[x] for x in names], "prod")
    for name in STEPS:
        (ref,) = reference_scores(path, layout, QUESTION, path_steps(n[name]), mode="outcome")
        assert n[name].score == pytest.approx(ref, abs=1e-4)
        assert n[name].aggregate == n[name].score  # one score for the whole solution


def test_qwen_separator_tokenises_to_its_id(qwen_dir: Path, tmp_path: Path) -> None:
    prm = load_prm(qwen_dir)
    assert prm.tag_id == prm.tokenizer.convert_tokens_to_ids("<extra_0>")
    assert prm.encode("5.<extra_0>")[-1] == prm.tag_id
    with pytest.raises(InvalidArgument, match="<extra_0>"):
        load_prm(make_qwen_prm(tmp_path / "no-sep", with_separator=False))


def test_shepherd_tag_tokenises_to_its_id(shepherd_dir: Path, tmp_path: Path) -> None:
    prm = load_prm(shepherd_dir)
    assert prm.tag_id == prm.tokenizer.convert_tokens_to_ids("ки")
    assert prm.encode("x = 5. ки\n")[-2] == prm.tag_id
    with pytest.raises(InvalidArgument, match="ки"):
        load_prm(make_shepherd_prm(tmp_path / "no-tag", with_tag=False))


def test_bad_inputs(qwen_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        load_prm(tmp_path)
    with pytest.raises(InvalidArgument):
        load_prm(qwen_dir, mode="sometimes")
    prm = load_prm(qwen_dir)
    with pytest.raises(InvalidArgument):
        prm.score([tree()["a1"]], "median")


@pytest.mark.parametrize("strategy", ["beam", "lookahead"])
def test_search_with_a_separate_prm(strategy: str, shepherd_dir: Path, tiny_llama_dir: Path) -> None:
    from ponder.proto.config import SolveConfig
    from ponder.workers.hf_policy import HFPolicy
    from ponder.workers.loop import SearchLoop
    from ponder.workers.models import resolve

    policy = HFPolicy(resolve(str(tiny_llama_dir)))
    prm = load_prm(shepherd_dir)
    events: list = []
    loop = SearchLoop(policy, prm, sink=lambda _j, evs: events.extend(evs))
    cfg = SolveConfig(question=QUESTION, strategy=strategy, generations=4, beam_width=2, lookahead=1,
                      max_steps=3, max_step_tokens=5, seed=3)
    loop.submit("job", cfg.validate())
    loop.run_until_idle()
    fin = events[-1].final
    u = fin.usage
    steps = [e.step for e in events if e.HasField("step")]
    assert steps and all(s.HasField("score") for s in steps)
    assert u.prm_tokens > 0
    policy_flops = 2.0 * policy.n_params * (u.prompt_tokens + u.decode_tokens)
    assert u.flops == pytest.approx(policy_flops + 2.0 * prm.n_params * u.prm_tokens, rel=1e-6)
    # beam search: the PRM reads the question once per first step and every step's own tokens
    # once; lookahead re-reads a child's tokens when it scores the end of the child's rollout
    prompt = len(prm.encode(prm.fmt.prompt_template.format(question=QUESTION)))
    read_once = sum(len(prm.encode(s.text.strip() + prm.fmt.step_suffix)) for s in steps)
    read_once += prompt * sum(1 for s in steps if s.depth == 1)
    if strategy == "beam":
        assert u.prm_tokens == read_once
    else:
        assert u.prm_tokens > read_once


def test_load_verifier_picks_the_prm_and_its_mode(qwen_dir: Path) -> None:
    from fakes import ScriptedPolicy
    from ponder.workers.prm import load_verifier

    step = load_verifier(str(qwen_dir), ScriptedPolicy())
    outcome = load_verifier(f"outcome:{qwen_dir}", ScriptedPolicy())
    assert isinstance(step, ModelPRM) and step.mode == "step"
    assert isinstance(outcome, ModelPRM) and outcome.mode == "outcome"
