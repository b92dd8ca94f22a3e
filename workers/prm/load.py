"""Building a verifier from a name, for the worker, the CLI and the evaluation script.

Specs:
- ``path/to/head.safetensors`` — a value head (:class:`ValueHead`) on the policy's hidden states;
- ``random`` or ``random:SEED`` — a linear value head with random weights (seed 0 by default):
  meaningless scores, for exercising the search plumbing without a trained head;
- ``path/to/dir`` — a separate PRM model (layout detected from its config, see
  :mod:`ponder.workers.prm.model_prm`), scoring every step;
- ``outcome:path/to/dir`` — the same model in outcome mode (one score for the whole solution);
- ``confidence``, ``confidence:PATH``, ``confidence:uncalibrated`` — the policy's own token
  probabilities, calibrated per model (:mod:`ponder.workers.prm.confidence`);
- ``likelihood:JUDGE``, ``likelihood:JUDGE:PATH``, ``likelihood:JUDGE:uncalibrated`` — a larger
  model sharing the policy's tokenizer rescoring the policy's tokens, calibrated per pair
  (:mod:`ponder.workers.prm.likelihood`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ponder.proto.errors import InvalidArgument
from ponder.workers.policy import Policy
from ponder.workers.prm.model_prm import load_prm
from ponder.workers.prm.value_head import ValueHead, ValueHeadVerifier
from ponder.workers.verifier import Verifier


def random_value_head(hidden_size: int, seed: int = 0) -> ValueHeadVerifier:
    gen = torch.Generator().manual_seed(seed)
    head = ValueHead(hidden_size)
    with torch.no_grad():
        # scale so that logits of unit-norm-ish hidden states spread over (-2, 2)
        head.out.weight.copy_(torch.randn(1, hidden_size, generator=gen) / hidden_size**0.5)
        head.out.bias.zero_()
    return ValueHeadVerifier(head, name=f"random-value-head:{seed}")


def load_verifier(spec: str, policy: Policy) -> Verifier:
    """The verifier named by ``spec`` (see the module docstring). Anything that makes it unusable
    (a missing file, a calibration or head for another model, a PRM whose tokenizer splits its
    tag) is InvalidArgument on the field ``verifier``, raised here — at worker start — never
    inside a batch."""
    try:
        return _load(spec.strip(), policy)
    except InvalidArgument as exc:
        if exc.field == "verifier":
            raise
        raise InvalidArgument("verifier", f"{spec.strip()!r}: {exc.message}") from exc


def _load(spec: str, policy: Policy) -> Verifier:
    if spec == "confidence" or spec.startswith("confidence:"):
        from ponder.workers.prm.confidence import load_confidence

        return load_confidence(spec, getattr(policy, "files", None))
    if spec == "likelihood" or spec.startswith("likelihood:"):
        from ponder.workers.prm.likelihood import load_likelihood

        return load_likelihood(spec, policy)
    if spec == "random" or spec.startswith("random:"):
        try:
            seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
        except ValueError:
            raise InvalidArgument("verifier", f"bad seed in {spec!r}") from None
        return random_value_head(policy.hidden_size, seed)
    mode = "step"
    if spec.startswith("outcome:"):
        mode, spec = "outcome", spec[len("outcome:") :]
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        if mode == "outcome":
            raise InvalidArgument("verifier", "outcome mode applies to PRM model directories, not value heads")
        ver = ValueHeadVerifier(path)
        ver.check_policy(policy.hidden_size)
        return ver
    if path.is_dir():
        prm = load_prm(path, mode=mode)
        device = getattr(policy, "device", None)  # a separate PRM runs beside the policy
        return prm.to(device) if device is not None and str(device) != "cpu" else prm
    raise InvalidArgument(
        "verifier",
        f"{spec!r} is neither a value-head .safetensors file, a PRM directory, 'confidence[:PATH]', "
        "'likelihood:JUDGE[:PATH]' nor 'random'",
    )
