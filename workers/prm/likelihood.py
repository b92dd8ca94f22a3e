"""The likelihood verifier: a second, stronger language model (the *judge*) reads the policy's
tokens and says how likely it finds them; a step the policy slipped on is one the judge finds
much less likely than the policy did.

    --verifier likelihood:arith-large            # the calibration beside the policy
    --verifier likelihood:arith-large:PATH       # a calibration file
    --verifier likelihood:arith-large:uncalibrated

The judge must share the policy's tokenizer (it reads the policy's token ids, not text); at load
a different vocabulary or a different split of a probe text is ``INVALID_ARGUMENT``. Each scored
node keeps the judge's KV cache of its path, the judge's log-probs of the path's tokens and its
next-token distribution, so scoring a child runs only the child's tokens through the judge (a
node whose parent was never scored or was released extends its nearest cached ancestor).
FLOPs: 2·P_judge per token the judge reads.

A revision's root (earlier attempts in its prompt) is read as the plain question's prompt: the
judge scores an answer to the question, as the calibration saw them, whatever context wrote it.

The score of a node is computed over the whole path root→node (as for the confidence verifier,
so ``last`` scores the whole solution). Features of the path, with ``own`` the policy's log-probs
recorded while sampling (``StepOutput.logprobs``, T = 1), ``judge`` the judge's, and a token's
*gap* the judge's log-prob of it minus the judge's log-prob of its favourite token at that place
(0 where the path took the judge's choice):

- ``ratio_mean``, ``ratio_min``: the mean and the lowest per-token log-likelihood ratio
  judge − own (measured on arith, docs/quality.md: the lowest ratio ranks samples of one
  question best of any single number);
- ``ratio_window_min``: the lowest mean ratio over sliding windows of ``window`` tokens;
- ``judge_mean``, ``judge_min``, ``own_mean``, ``own_min``;
- ``step_ratio_min``: the lowest ratio in the newest step;
- ``length``: path tokens / 100;
- ``gap_min``, ``gap_2nd``: the lowest and the second-lowest gap (a slip is a token the judge
  would not have written; on arith's validation pool the second adds ranking power only beside
  the first, and the fit gives it a negative weight: docs/quality.md has the figures).

A :class:`LikelihoodCalibration` (``ponder train likelihood``: logistic regression on these
features against the correctness of the final answer, fitted once per policy/judge pair and
saved beside the policy as ``likelihood-<judge>.json``) maps them to P(correct). Without one the
score is ``exp(judge_mean)``, the judge's geometric-mean token probability.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ponder.proto.errors import InvalidArgument
from ponder.workers.prm.confidence import Calibration, calibration_path, model_fingerprint, path_logprobs
from ponder.workers.prm.prefix_cache import IncrementalDecoder, PrefixState, Row
from ponder.workers.types import Node, Prompt, ScoreOutput
from ponder.workers.verifier import AGGREGATIONS, Verifier, aggregate

FORMAT = "ponder-likelihood"
FEATURES = (
    "ratio_mean", "ratio_min", "ratio_window_min", "judge_mean", "judge_min", "own_mean", "own_min",
    "step_ratio_min", "length", "gap_min", "gap_2nd",
)
PROBE_TEXT = "Compute 12 + 3 * (4 - 1). Step: 3 * 3 = 9. \\boxed{21}"


class LikelihoodCalibration(Calibration):
    """Logistic regression on :data:`FEATURES` for one policy/judge pair. ``model`` names both
    (``policy+judge``) and ``fingerprint`` joins both models' fingerprints; ``tail`` is unused."""

    KIND: ClassVar[str] = "likelihood"
    FORMAT: ClassVar[str] = FORMAT
    FEATURES: ClassVar[tuple[str, ...]] = FEATURES


def features(own: Sequence[float], judge: Sequence[float], gaps: Sequence[float], newest: int, window: int) -> list[float]:
    """The feature vector (:data:`FEATURES` order) of a path whose tokens the policy gave log-probs
    ``own``, the judge ``judge`` and gaps ``gaps`` (same length), the newest step being the last
    ``newest``."""
    n = min(len(own), len(judge), len(gaps))
    if n == 0:
        return [0.0] * len(FEATURES)
    own, judge = list(own[-n:]), list(judge[-n:])
    low2 = sorted(gaps[-n:])[:2] + [0.0]
    ratio = [j - o for j, o in zip(judge, own)]
    w = max(1, min(window, n))
    run = sum(ratio[:w])
    low = run
    for i in range(w, n):
        run += ratio[i] - ratio[i - w]
        low = min(low, run)
    step = ratio[-newest:] if newest > 0 else ratio
    return [
        sum(ratio) / n, min(ratio), low / w, sum(judge) / n, min(judge), sum(own) / n, min(own),
        min(step), n / 100.0, low2[0], low2[1],
    ]


def probability(calibration: LikelihoodCalibration | None, x: Sequence[float]) -> float:
    """P(correct) of a feature vector: the calibration's, else exp(judge mean log-prob)."""
    return math.exp(x[3]) if calibration is None else calibration.probability(x)


JUDGE_MAX_THREADS = 4


def judge_threads() -> int:
    """The judge's torch threads by default: the cores this process may use, at most
    :data:`JUDGE_MAX_THREADS` (more would split a chunk's GEMMs too thinly; 2 measured here)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(JUDGE_MAX_THREADS, cores))


@dataclass
class JudgeState:
    """What the judge has read along a path: its KV cache, its log-probs and gaps of the path's
    step tokens (root prompt excluded) and its log-distribution over the next token."""

    prefix: PrefixState
    logprobs: list[float]
    gaps: list[float]
    next_logp: torch.Tensor  # (V,)


class LikelihoodVerifier(Verifier):
    """Scores nodes from the judge's and the policy's log-probs of their paths (module docstring)."""

    def __init__(self, judge: Any, calibration: LikelihoodCalibration | None, *, judge_name: str,
                 window: int = 4, n_params: int = 0, pad_id: int = 0, chunk: int = 64,
                 question_ids: Callable[[str], list[int]] | None = None, threads: int | None = None) -> None:
        self.judge = judge
        # torch threads for the judge's forward (at least the caller's): its GEMMs are large enough
        # to share out, unlike the small policy's decode steps, which the worker runs on one thread
        # (arith's eval job, best-of-16 on 32 questions: 45-51 s with one judge thread, 34-36 s with
        # two, the same answers; docs/quality.md)
        self.threads = judge_threads() if threads is None else max(1, threads)
        # the policy's plain prompt of a question: what the judge reads before a revision's steps
        self.question_ids = question_ids
        self.chunk = chunk  # rows per judge forward
        self.calibration = calibration
        self.vote_power = calibration.vote_power if calibration is not None else 1.0
        self.window = calibration.window if calibration is not None else window
        self.name = f"likelihood:{judge_name}" + ("" if calibration is not None else ":uncalibrated")
        self.n_params = n_params
        self.runner = IncrementalDecoder(judge.get_decoder(), pad_id)
        self.head = judge.get_output_embeddings()

    def to(self, device: str | torch.device) -> LikelihoodVerifier:
        self.judge.to(device)
        return self

    def from_features(self, x: Sequence[float]) -> float:
        return probability(self.calibration, x)

    def _row(self, node: Node) -> tuple[Row | None, list[tuple[Node, int, int]], JudgeState | None]:
        """The judge's forward row for ``node`` (None when there is nothing new to read), the
        spans of each step in its new tokens, and the cached ancestor it extends."""
        todo: list[Node] = []
        anchor = node.parent
        while anchor is not None and anchor.verifier_state is None:
            todo.append(anchor)
            anchor = anchor.parent
        past: JudgeState | None = anchor.verifier_state if anchor is not None else None
        new: list[int] = []
        spans: list[tuple[Node, int, int]] = []
        for step in [*reversed(todo), node]:
            start = len(new)
            new += self._root_ids(step) if step.depth == 0 else list(step.token_ids)
            spans.append((step, start, len(new)))
        if not new:
            return None, spans, past
        return Row(past.prefix if past is not None else None, new, len(new)), spans, past

    def _root_ids(self, root: Node) -> list[int]:
        """What the judge reads as a root: the root's prompt, except that a revision's prompt
        (earlier attempts in context) is replaced by the plain question's: the judge scores an
        answer to the question as the calibration saw them, whatever context wrote it, and does
        not re-read every earlier attempt for each new one."""
        if root.prompt is not None and root.prompt.attempts and self.question_ids is not None:
            return self.question_ids(root.prompt.question)
        return list(root.token_ids)

    def _read(self, nodes: list[Node]) -> int:
        """Run the judge over what each node adds to its nearest cached ancestor and leave the
        result in ``node.verifier_state``; returns the tokens read."""
        built = [self._row(n) for n in nodes]
        live = [b for b, (row, _, _) in enumerate(built) if row is not None]
        # Rows run in chunks of similar length (sorted by new, then cached tokens): every row
        # of a forward is padded to the chunk's longest, so one call over steps of 3 to 30
        # tokens would spend most of its FLOPs on padding.
        order = sorted(live, key=lambda b: (len(built[b][0].new_ids), built[b][0].past.length if built[b][0].past else 0))  # type: ignore[union-attr]
        prefix: dict[int, PrefixState] = {}
        logps: dict[int, torch.Tensor] = {}
        tops: dict[int, list[float]] = {}
        for c in range(0, len(order), self.chunk):
            part = order[c : c + self.chunk]
            hidden, states = self.runner.run([built[b][0] for b in part])  # type: ignore[misc]
            logp = torch.log_softmax(self.head(hidden).float(), -1).cpu()  # (B, N, V)
            top = logp.max(-1).values.tolist()  # (B, N): the judge's favourite at each place
            for k, b in enumerate(part):
                prefix[b], logps[b], tops[b] = states[k], logp[k], top[k]
        for b, (node, (row, spans, past)) in enumerate(zip(nodes, built)):
            judge_lps = list(past.logprobs) if past is not None else []
            gaps = list(past.gaps) if past is not None else []
            if row is None:
                if past is not None:
                    node.verifier_state = JudgeState(past.prefix, judge_lps, gaps, past.next_logp)
                continue
            nxt = past.next_logp if past is not None else None
            lp, ids, top = logps[b], row.new_ids, tops[b]
            for step, start, end in spans:
                if step.depth == 0:  # the prompt's tokens are the question, not the policy's
                    continue
                for t in range(start, end):
                    if t > 0:
                        got = float(lp[t - 1, ids[t]])
                        judge_lps.append(got)
                        gaps.append(got - top[t - 1])
                    elif nxt is not None:
                        got = float(nxt[ids[t]])
                        judge_lps.append(got)
                        gaps.append(got - float(nxt.max()))
                    else:
                        judge_lps.append(0.0)
                        gaps.append(0.0)
            # a copy: a view would keep the whole batch's (B, N, V) log-probs alive with the node
            node.verifier_state = JudgeState(prefix[b], judge_lps, gaps, lp[len(ids) - 1].clone())
        return sum(len(r.new_ids) for r, _, _ in built if r is not None)

    @torch.inference_mode()
    def score(self, nodes: list[Node], aggregation: str) -> ScoreOutput:
        if aggregation not in AGGREGATIONS:
            raise InvalidArgument("options.aggregation", f"unknown aggregation {aggregation!r}")
        if not nodes:
            return ScoreOutput(scores=[], aggregates=[])
        # A parent without a cache that several nodes of this call extend (a question's prompt
        # under its first samples) is read once first, so its children share its KV instead of
        # each reading the prompt again.
        count: dict[int, int] = {}
        for n in nodes:
            if n.parent is not None and n.parent.verifier_state is None:
                count[id(n.parent)] = count.get(id(n.parent), 0) + 1
        shared = {id(n.parent): n.parent for n in nodes if n.parent is not None and count.get(id(n.parent), 0) > 1}
        was = torch.get_num_threads()
        torch.set_num_threads(max(was, self.threads))
        try:
            tokens = self._read(list(shared.values())) if shared else 0
            tokens += self._read(nodes)
        finally:
            torch.set_num_threads(was)
        scores: list[float] = []
        for node in nodes:
            state = node.verifier_state
            judge_lps, gaps = (state.logprobs, state.gaps) if isinstance(state, JudgeState) else ([], [])
            x = features(path_logprobs(node), judge_lps, gaps, len(node.logprobs), self.window)
            scores.append(self.from_features(x))
        aggs = [aggregate(n.aggregate, n.n_scored, s, aggregation) for n, s in zip(nodes, scores)]
        return ScoreOutput(scores=scores, aggregates=aggs, prm_tokens=tokens, flops=2.0 * self.n_params * tokens)

    def release(self, nodes: list[Node]) -> None:
        for n in nodes:
            n.verifier_state = None


def likelihood_calibration_path(policy_files: Any, judge: str) -> Path:
    """``likelihood-<judge>.json`` beside the policy (``<gguf stem>.likelihood-<judge>.json``
    beside a GGUF file)."""
    base = calibration_path(policy_files)
    tag = Path(judge).name or judge
    return base.with_name(base.name.replace("confidence.json", f"likelihood-{tag}.json"))


def pair_fingerprint(policy_files: Any, judge_files: Any) -> str:
    return model_fingerprint(policy_files) + ":" + model_fingerprint(judge_files)


def check_same_tokenizer(policy_tok: Any, judge_tok: Any, judge: str) -> None:
    """The judge reads the policy's token ids: vocabularies and splits must agree."""
    if len(policy_tok) != len(judge_tok):
        raise InvalidArgument("verifier", f"judge {judge!r} has a vocabulary of {len(judge_tok)} tokens, "
                                          f"the policy {len(policy_tok)}: a likelihood judge must share the policy's tokenizer")
    a = list(policy_tok(PROBE_TEXT, add_special_tokens=False)["input_ids"])
    b = list(judge_tok(PROBE_TEXT, add_special_tokens=False)["input_ids"])
    if a != b:
        raise InvalidArgument("verifier", f"judge {judge!r} splits text differently from the policy "
                                          f"({b[:8]}… vs {a[:8]}…): a likelihood judge must share the policy's tokenizer")


def likelihood_judge(spec: str) -> str:
    """The JUDGE of ``likelihood:JUDGE[:CALIBRATION|:uncalibrated]``; '' for any other spec, or
    for a likelihood spec that names no judge."""
    parts = spec.split(":", 2)
    return parts[1].strip() if parts[0] == "likelihood" and len(parts) > 1 else ""


def load_likelihood(spec: str, policy: Any) -> LikelihoodVerifier:
    """``likelihood:JUDGE``, ``likelihood:JUDGE:PATH`` or ``likelihood:JUDGE:uncalibrated``; JUDGE
    is a built-in model name or a model directory sharing the policy's tokenizer."""
    from ponder.workers.models import load_hf_model, load_tokenizer, non_embedding_params, resolve

    judge = likelihood_judge(spec)
    if not judge:
        raise InvalidArgument("verifier", "likelihood needs a judge model: likelihood:JUDGE[:CALIBRATION|:uncalibrated]")
    parts = spec.split(":", 2)
    arg = parts[2].strip() if len(parts) > 2 else ""
    judge_files = resolve(judge)
    if judge_files.gguf_file:
        raise InvalidArgument("verifier", f"judge {judge!r} is a GGUF file; the likelihood judge needs a model directory")
    policy_files = getattr(policy, "files", None)
    policy_tok = getattr(policy, "tokenizer", None)
    judge_tok = load_tokenizer(judge_files)
    if policy_tok is not None:
        check_same_tokenizer(policy_tok, judge_tok, judge)
    cal: LikelihoodCalibration | None = None
    if arg != "uncalibrated":
        path = Path(arg).expanduser() if arg else (
            likelihood_calibration_path(policy_files, judge) if policy_files is not None else None)
        if path is not None and (arg or path.exists()):
            cal = LikelihoodCalibration.load(path)
            if policy_files is not None:
                want = pair_fingerprint(policy_files, judge_files)
                if cal.fingerprint != want:
                    raise InvalidArgument(
                        "verifier",
                        f"likelihood calibration {path} was fitted on {cal.model!r} (fingerprint {cal.fingerprint}), "
                        f"not on {getattr(policy_files, 'name', '?')}+{judge} ({want}); refit it with `ponder train likelihood`",
                    )
    lm = load_hf_model(judge_files)
    vocab = int(lm.get_output_embeddings().weight.shape[0])
    if policy_tok is not None and vocab < len(policy_tok):
        raise InvalidArgument("verifier", f"judge {judge!r} predicts {vocab} token ids, the policy's tokenizer has "
                                          f"{len(policy_tok)}: a likelihood judge must share the policy's tokenizer")
    pad = judge_tok.pad_token_id
    question_ids = None
    if callable(getattr(policy, "encode", None)) and callable(getattr(policy, "format_prompt", None)):
        def question_ids(question: str) -> list[int]:
            return list(policy.encode(policy.format_prompt(Prompt(question))))
    ver = LikelihoodVerifier(lm, cal, judge_name=judge, n_params=non_embedding_params(lm),
                             pad_id=int(pad if pad is not None else 0), question_ids=question_ids)
    ver.calibration_file = path if cal is not None else None
    device = getattr(policy, "device", None)
    return ver.to(device) if device is not None and str(device) != "cpu" else ver
