"""Verifiers: a value head on the policy's hidden states and separate PRM models."""

from ponder.workers.prm.value_head import ValueHead, ValueHeadVerifier

__all__ = ["ValueHead", "ValueHeadVerifier"]
