"""The built-in arithmetic task ``arith``: seeded multi-step integer arithmetic with worked,
step-by-step solutions that end in ``\\boxed{…}``.

A question is ``Compute 37 + 48 * 3 - 19.``; its solution does one binary operation per step
(parentheses first, then ``*`` left to right, then ``+``/``-`` left to right) and restates what is
left, so every step can be checked on its own::

    48 * 3 = 144
    37 + 144 - 19

    37 + 144 = 181
    181 - 19

    181 - 19 = 162

    The answer is \\boxed{162}.

Steps are separated by a blank line (the service's default step delimiter). Restating the
remainder keeps the model's job local (read the previous step, do one operation): a 3.4M
character-level model without it learned the format but lost track of the pending operations on
long chains (issue 6's feasibility note), which would make errors about bookkeeping instead of
arithmetic.

Difficulty knobs, recorded on every question: ``n_ops`` (binary operations), ``digits`` (the
largest operand has this many digits), ``parens`` (one parenthesised group). A question's split
(train / validation / test) is a pure function of its text, so no question is ever in two
splits whatever mix or seed produced it.
"""

from __future__ import annotations

import hashlib
import random
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

from ponder.proto.config import DEFAULT_STEP_DELIMITER
from ponder.workers.answers import extract_answer, is_correct

SPLITS = ("train", "validation", "test")
# Per-mille shares of the question space: train 80%, validation 10%, test 10%.
_SPLIT_EDGES = (800, 900, 1000)
STEP_DELIMITER = DEFAULT_STEP_DELIMITER
OPS = ("+", "-", "*")


@dataclass(frozen=True)
class Knobs:
    """One difficulty setting: how many operations, how large the operands, parentheses."""

    n_ops: int = 2
    digits: int = 1
    parens: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.n_ops <= 12:
            raise ValueError(f"n_ops must be in [1, 12], got {self.n_ops}")
        if not 1 <= self.digits <= 4:
            raise ValueError(f"digits must be in [1, 4], got {self.digits}")
        if self.parens and self.n_ops < 2:
            raise ValueError("parentheses need at least 2 operations")


@dataclass(frozen=True)
class Question:
    question: str  # "Compute 37 + 48 * 3 - 19."
    expression: str  # "37 + 48 * 3 - 19"
    steps: tuple[str, ...]  # the worked steps, the last one "The answer is \boxed{…}."
    answer: str  # "162"
    knobs: Knobs

    @property
    def solution(self) -> str:
        return STEP_DELIMITER.join(self.steps)

    @property
    def split(self) -> str:
        return split_of(self.question)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["steps"] = list(self.steps)
        return d


@dataclass(frozen=True)
class Mix:
    """A weighted mixture of knob settings, plus limits every question must respect."""

    entries: tuple[tuple[float, Knobs], ...]
    max_value: int = 999  # every intermediate result must lie in [-max_value, max_value]
    allow_negative: bool = False
    # Every product has a one-digit factor (48 * 3, never 12 * 13): a 3.4M model does not
    # learn two-digit long multiplication in minutes (issue 6's feasibility run: ~1% pass@1).
    small_factor: bool = True

    def __post_init__(self) -> None:
        if not self.entries or any(w <= 0 for w, _ in self.entries):
            raise ValueError("a mix needs at least one entry, all weights > 0")

    def draw(self, rng: random.Random) -> Knobs:
        weights = [w for w, _ in self.entries]
        return rng.choices([k for _, k in self.entries], weights=weights)[0]


def split_of(question: str) -> str:
    """The split a question belongs to, from a hash of its text (stable across runs)."""
    h = int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "big") % _SPLIT_EDGES[-1]
    for name, edge in zip(SPLITS, _SPLIT_EDGES):
        if h < edge:
            return name
    raise AssertionError("unreachable")


# -- expressions -------------------------------------------------------------------------------
# An expression is a flat list of tokens: ints, operator strings and "(" / ")".
Token = int | str


def _fmt(tokens: Sequence[Token]) -> str:
    out: list[str] = []
    prev: Token | None = None
    for t in tokens:
        glue = prev is None or prev == "(" or t == ")"
        out.append(str(t) if glue else " " + str(t))
        prev = t
    return "".join(out)


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    return a * b


def _next_op(tokens: list[Token]) -> int:
    """Index of the operator to evaluate next: inside the (only) parenthesised group first,
    then the first ``*``, then the first ``+``/``-``."""
    lo, hi = 0, len(tokens)
    if "(" in tokens:
        lo = tokens.index("(") + 1
        hi = tokens.index(")")
    span = range(lo, hi)
    for i in span:
        if tokens[i] == "*":
            return i
    for i in span:
        if tokens[i] in ("+", "-"):
            return i
    raise AssertionError(f"no operator left in {tokens}")


def solve(tokens: Sequence[Token]) -> tuple[list[str], list[tuple[int, str, int, int]]]:
    """The worked steps for an expression and every operation ``(a, op, b, a op b)``, in order."""
    toks = list(tokens)
    steps: list[str] = []
    values: list[tuple[int, str, int, int]] = []
    while len(toks) > 1:
        i = _next_op(toks)
        a, op, b = toks[i - 1], toks[i], toks[i + 1]
        assert isinstance(a, int) and isinstance(b, int) and isinstance(op, str)
        c = _apply(a, op, b)
        values.append((a, op, b, c))
        toks[i - 1 : i + 2] = [c]
        j = i - 1
        if 0 < j < len(toks) - 1 and toks[j - 1] == "(" and toks[j + 1] == ")":
            toks[j - 1 : j + 2] = [c]  # the group is one number now: drop its parentheses
        line = f"{_fmt([a, op, b])} = {c}"
        steps.append(line if len(toks) == 1 else f"{line}\n{_fmt(toks)}")
    steps.append(f"The answer is \\boxed{{{toks[0]}}}.")
    return steps, values


def _draw_expression(knobs: Knobs, rng: random.Random) -> list[Token]:
    hi = 10**knobs.digits - 1
    lo = 10 ** (knobs.digits - 1) if knobs.digits > 1 else 1
    n = knobs.n_ops + 1
    # The largest operand has ``digits`` digits; the others are drawn from 1..hi so that
    # two-digit questions still mix in small numbers (as worked problems do).
    big = rng.randrange(n)
    nums = [rng.randint(lo, hi) if i == big else rng.randint(1, hi) for i in range(n)]
    ops = [rng.choice(OPS) for _ in range(knobs.n_ops)]
    tokens: list[Token] = [nums[0]]
    for op, num in zip(ops, nums[1:]):
        tokens += [op, num]
    if knobs.parens:
        # A group of 2..n-1 operands (never the whole expression), as token indices.
        size = rng.randint(2, n - 1)
        start = rng.randint(0, n - size)
        a, b = 2 * start, 2 * (start + size - 1)
        tokens = tokens[:a] + ["("] + tokens[a : b + 1] + [")"] + tokens[b + 1 :]
    return tokens


def make_question(knobs: Knobs, rng: random.Random, mix: Mix | None = None) -> Question:
    """Draw one question with these knobs (rejection-sampled against the mix's value limits)."""
    mix = mix or Mix(((1.0, knobs),))
    for _ in range(10_000):
        tokens = _draw_expression(knobs, rng)
        steps, ops = solve(tokens)
        if any(abs(c) > mix.max_value for *_, c in ops):
            continue
        if not mix.allow_negative and any(c < 0 for *_, c in ops):
            continue
        if mix.small_factor and any(op == "*" and min(a, b) > 9 for a, op, b, _ in ops):
            continue
        expr = _fmt(tokens)
        return Question(f"Compute {expr}.", expr, tuple(steps), str(ops[-1][3]), knobs)
    raise ValueError(f"no question with {knobs} fits {mix}")


# -- mixes and splits --------------------------------------------------------------------------


def _mix(rows: Sequence[tuple[float, int, int, bool]], **kw: object) -> Mix:
    return Mix(tuple((w, Knobs(o, d, p)) for w, o, d, p in rows), **kw)  # type: ignore[arg-type]


# What the policy is trained on: every knob the test mix uses, weighted toward long chains,
# where most of the learning is.
TRAIN_MIX = _mix(
    [
        (1.0, 1, 1, False), (1.0, 1, 2, False),
        (1.5, 2, 1, False), (1.5, 2, 2, False), (1.0, 2, 1, True), (1.0, 2, 2, True),
        (2.0, 3, 1, False), (1.5, 3, 2, False), (1.0, 3, 1, True), (1.0, 3, 2, True),
        (2.0, 4, 1, False), (1.5, 4, 2, False), (1.0, 4, 1, True),
        (2.0, 5, 1, False), (1.0, 5, 2, False), (1.0, 5, 1, True),
        (1.5, 6, 1, False),
    ]
)
# What is evaluated (test split, PRM and reviser data): knobs where the trained policy's
# per-question pass@1 spreads. Measured on 12 validation questions per knob × 8 samples with the
# committed policy: 1-2 single-digit operations are ~1.0 (left out, except through other knobs),
# (5,2,parens) and 6 operations with two digits or parentheses are ≤ 0.05 (left out); the rest
# mix questions ≥ 0.8, ≤ 0.1 and in between (docs/quality.md has the test-split figures).
EVAL_MIX = _mix(
    [
        (1.0, 1, 2, False),
        (1.0, 2, 2, False), (1.0, 2, 2, True),
        (1.0, 3, 1, True), (1.0, 3, 2, False), (1.0, 3, 2, True),
        (1.0, 4, 1, False), (1.0, 4, 1, True), (1.0, 4, 2, False), (1.0, 4, 2, True),
        (1.0, 5, 1, False), (1.0, 5, 1, True), (1.0, 5, 2, False),
        (1.0, 6, 1, False),
    ]
)
MIXES: dict[str, Mix] = {"train": TRAIN_MIX, "eval": EVAL_MIX}


def stream(split: str, seed: int, mix: Mix = TRAIN_MIX) -> Iterator[Question]:
    """An endless seeded stream of questions of one split (others are skipped)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"arith:{split}:{seed}")
    while True:
        q = make_question(mix.draw(rng), rng, mix)
        if q.split == split:
            yield q


def questions(split: str, n: int, seed: int = 0, mix: Mix | None = None, unique: bool = True) -> list[Question]:
    """``n`` seeded questions of one split (distinct texts unless ``unique`` is False)."""
    mix = mix or (TRAIN_MIX if split == "train" else EVAL_MIX)
    out: list[Question] = []
    seen: set[str] = set()
    for q in stream(split, seed, mix):
        if unique and q.question in seen:
            continue
        seen.add(q.question)
        out.append(q)
        if len(out) == n:
            return out
    raise AssertionError("unreachable")


def grade(solution: str, gold: str) -> bool:
    """True when a solution's final answer equals ``gold`` (math-verify equivalence)."""
    return is_correct(extract_answer(solution), gold)


# -- exact process labels -----------------------------------------------------------------------
_EQUATION = re.compile(r"^\s*(-?\d{1,6})\s*([-+*])\s*(-?\d{1,6})\s*=\s*(-?\d{1,7})\s*$")
_EXPRESSION = re.compile(r"^[0-9+\-*() ]{1,200}$")


def _value(expression: str) -> int | None:
    """The value of a restated remainder (digits, + - *, parentheses), or None if it is not one."""
    text = expression.strip()
    if not _EXPRESSION.match(text) or "**" in text:  # '**' would be a power, not our syntax
        return None
    try:
        with warnings.catch_warnings():  # "3 (4)" compiles with a SyntaxWarning, then fails
            warnings.simplefilter("ignore")
            value = eval(text, {"__builtins__": {}}, {})  # noqa: S307 - only digits, + - * and ()
    except (SyntaxError, TypeError, ValueError, ZeroDivisionError):
        return None
    return value if isinstance(value, int) else None


def step_valid(step: str, gold: str) -> bool:
    """Whether one step, read on its own, is a right move toward ``gold``: an answer step states
    ``gold``; a working step's equation ``a op b = c`` is true and what it says is left (the
    restated remainder, or ``c`` when nothing is left) still evaluates to ``gold``."""
    if "\\boxed" in step:
        return is_correct(extract_answer(step), gold)
    lines = [ln for ln in step.strip("\n").split("\n") if ln.strip()]
    if not lines or len(lines) > 2:
        return False
    m = _EQUATION.match(lines[0])
    if m is None:
        return False
    a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
    if _apply(a, op, b) != c:
        return False
    left = _value(lines[1]) if len(lines) == 2 else c
    try:
        return left is not None and left == int(gold)
    except ValueError:
        return False


def step_labels(steps: Sequence[str], gold: str) -> list[float]:
    """Exact process labels (PRM800K-style): 1.0 for every step before the first wrong one, 0.0
    from the first wrong step on. The arith checker makes them exact; Monte Carlo labels are
    an estimate of the same thing (the fraction of rollouts from after the step that succeed)."""
    out: list[float] = []
    ok = True
    for step in steps:
        ok = ok and step_valid(step, gold)
        out.append(1.0 if ok else 0.0)
    return out


@dataclass
class PromptSpec:
    """How the arith models see questions and earlier attempts: written to ``ponder.json``
    (the fields of :class:`ponder.workers.models.PromptFormat`)."""

    prompt_template: str = "{question}\n\n"
    attempt_template: str = "Attempt {index}:\n{attempt}\n\n"
    # The question goes right before the new solution, as in a plain prompt: with the question
    # first and up to 4 attempts in between, the 4-layer reviser copied operands from the
    # attempts instead (pass@1 fell from 0.45 at revision 1 to 0.05 at revision 3).
    revision_template: str = "{attempts}Revise: {question}\n\n"
    step_delimiter: str = STEP_DELIMITER
    use_chat_template: bool = False
    system_prompt: str = ""
    max_attempts_in_context: int = 4
    extra: dict[str, object] = field(default_factory=dict)

    def ponder_json(self) -> dict[str, object]:
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        return d


def parse_expression(expression: str) -> list[Token]:
    """The token list of an expression as :func:`_fmt` writes it (``"37 + (48 * 3)"`` →
    ``[37, "+", "(", 48, "*", 3, ")"]``): the inverse of ``_fmt`` on this task's expressions."""
    out: list[Token] = []
    for m in re.finditer(r"\d+|[-+*()]", expression):
        t = m.group(0)
        out.append(int(t) if t.isdigit() else t)
    if _fmt(out) != expression.strip():
        raise ValueError(f"not an arith expression: {expression!r}")
    return out
