"""Verifiers: a value head on the policy's hidden states (no extra forward pass) and separate
PRM models (Qwen2.5-Math-PRM and Math-Shepherd layouts) with a per-node prefix cache."""

from ponder.workers.prm.load import load_verifier, random_value_head
from ponder.workers.prm.model_prm import ModelPRM, PRMFormat, load_prm
from ponder.workers.prm.value_head import ValueHead, ValueHeadVerifier

__all__ = ["ModelPRM", "PRMFormat", "ValueHead", "ValueHeadVerifier", "load_prm", "load_verifier", "random_value_head"]
