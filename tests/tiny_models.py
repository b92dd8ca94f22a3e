"""Tiny randomly initialised decoder checkpoints, built in the test, saved in HF format.

A byte-level tokenizer (259 ids: <pad>, <s>, </s> and the 256 byte symbols) makes any text
encodable and decodable, so the real loading, prompting and decoding code paths run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def byte_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_config(arch: str = "llama", **overrides: Any) -> Any:
    """A small config of the Llama family (llama, qwen2, mistral) over the byte vocabulary."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common: dict[str, Any] = dict(
        vocab_size=259,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    common.update(overrides)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
    return cls(**common)


def make_tiny_model(
    path: Path,
    arch: str = "llama",
    seed: int = 0,
    ponder_json: dict[str, Any] | None = None,
    mutate: Callable[[Any], None] | None = None,
    **overrides: Any,
) -> Path:
    """Save a random ``arch`` causal LM and the byte tokenizer under ``path``; return it.
    ``mutate(model)`` may edit the weights before saving."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides))
    if mutate is not None:
        with torch.no_grad():
            mutate(model)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    byte_tokenizer().save_pretrained(str(path))
    if ponder_json is not None:
        (path / "ponder.json").write_text(json.dumps(ponder_json))
    return path
