"""The committed arith artifacts: hashes match the manifest, sizes fit, the prompt format is the
one the models were trained on, and the policy with its value head answers an arith question
through the real service path (HFPolicy or the engine + SearchLoop + ValueHeadVerifier)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ponder.proto.config import SolveConfig
from ponder.workers.loop import SearchLoop
from ponder.workers.models import format_prompt, resolve
from ponder.workers.prm.value_head import ValueHeadVerifier
from ponder.tasks import arith
from ponder.training import manifest

ART = Path(__file__).resolve().parents[1] / "artifacts" / "arith"
POLICY, HEAD, REVISER = ART / "policy", ART / "value_head.safetensors", ART / "reviser"


def test_manifest_hashes_and_size() -> None:
    data = json.loads((ART / manifest.MANIFEST).read_text())
    assert set(data["components"]) >= {"policy", "value_head", "reviser"}
    assert manifest.verify(ART) == []
    # 22 MB of issue 6's models and labels, the exact-label PRM model (6.8 MB) and head, and
    # arith-large, the exchange's 11.5M-parameter policy (23.4 MB in fp16): 53.3 MB in all
    assert data["total_bytes"] <= 56 * 1024 * 1024
    for comp in data["components"].values():
        assert comp["command"].startswith("ponder train ")
    # Weights are fp16 safetensors.
    from safetensors import safe_open

    for f in (POLICY / "model.safetensors", REVISER / "model.safetensors", HEAD):
        with safe_open(str(f), framework="pt") as st:
            assert {str(st.get_tensor(k).dtype) for k in st.keys()} == {"torch.float16"}


@pytest.mark.parametrize("path", [POLICY, REVISER])
def test_prompt_format_is_the_trained_one(path: Path) -> None:
    files = resolve(str(path))
    spec = arith.PromptSpec()
    assert files.fmt.prompt_template == spec.prompt_template
    assert files.fmt.step_delimiter == "\n\n" and not files.fmt.use_chat_template
    q = "Compute 3 + 4."
    assert format_prompt(None, files.fmt, q) == "Compute 3 + 4.\n\n"
    attempt = "3 + 4 = 7\n\nThe answer is \\boxed{7}."
    # the policy shows an earlier attempt whole; the reviser was trained on what each step
    # computed (ponder train revise --attempt-view results)
    shown = {POLICY: f"Attempt 1:\n{attempt}\n\n", REVISER: "Attempt 1: 7\n"}[path]
    assert format_prompt(None, files.fmt, q, (attempt,)) == shown + "Revise: Compute 3 + 4.\n\n"
    assert files.fmt.revision_template == spec.revision_template


def _solve(policy: object, verifier: ValueHeadVerifier, question: str, strategy: str) -> tuple[str, object]:
    events: list = []
    loop = SearchLoop(policy, verifier, sink=lambda _j, evs: events.extend(evs))  # type: ignore[arg-type]
    cfg = SolveConfig(question=question, strategy=strategy, generations=4, seed=3, max_step_tokens=96, max_steps=12)
    loop.submit("job", cfg.validate())
    loop.run_until_idle()
    final = events[-1].final
    return final.answer, final


@pytest.mark.parametrize("backend", ["hf", "engine"])
def test_policy_and_value_head_answer_an_arith_question(backend: str) -> None:
    files = resolve(str(POLICY))
    if backend == "hf":
        from ponder.workers.hf_policy import HFPolicy

        policy = HFPolicy(files)
    else:
        from ponder.workers.engine.engine_policy import EnginePolicy

        policy = EnginePolicy.load(str(POLICY))
    verifier = ValueHeadVerifier(HEAD)
    verifier.check_policy(policy.hidden_size)
    answer, final = _solve(policy, verifier, "Compute 7 + 8 * 2.", "best_of_n")
    assert answer == "23"
    assert final.usage.generations == 4 and final.usage.decode_tokens > 0  # type: ignore[attr-defined]
    assert all(0.0 <= v.score <= 4.0 for v in final.votes)  # type: ignore[attr-defined]


def test_reviser_answers_through_the_revision_strategy() -> None:
    from ponder.workers.hf_policy import HFPolicy

    policy = HFPolicy(resolve(str(REVISER)))
    verifier = ValueHeadVerifier(HEAD)
    answer, final = _solve(policy, verifier, "Compute 6 + 3.", "revision")
    assert answer == "9"
    assert final.strategy == "revision"  # type: ignore[attr-defined]


def test_separate_prm_model_serves_as_a_verifier() -> None:
    from ponder.workers.hf_policy import HFPolicy
    from ponder.workers.prm.load import load_verifier

    policy = HFPolicy(resolve(str(POLICY)))
    verifier = load_verifier(str(ART / "prm"), policy)
    answer, final = _solve(policy, verifier, "Compute 9 - 4 + 2.", "best_of_n")  # type: ignore[arg-type]
    assert answer == "7"
    assert final.usage.prm_tokens > 0  # type: ignore[attr-defined]
