"""Small Llama-config decoders for the built-in tasks: the tokenizer, the config, and saving /
loading HF-format checkpoints that the rest of ponder loads like any other model.

The tokenizer is byte-level with no merges (259 ids: ``<pad>``, ``<s>``, ``</s>`` and the 256
byte symbols): one character of arithmetic is one token, every text is encodable, and a step
delimiter tokenises the same wherever it appears. It is an HF ``tokenizers`` tokenizer saved
through ``PreTrainedTokenizerFast``, so ``AutoTokenizer.from_pretrained(dir)`` loads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
VOCAB_SIZE = 259


@dataclass(frozen=True)
class ModelShape:
    """The decoder's size. Defaults: issue 6's feasibility model (3.4M non-embedding params)."""

    layers: int = 4
    width: int = 256
    heads: int = 8
    kv_heads: int = 8
    ffn: int = 768
    max_positions: int = 1024

    def config(self) -> Any:
        from transformers import LlamaConfig

        return LlamaConfig(  # type: ignore[call-arg]  # (transformers' annotations lack rope_theta)
            vocab_size=VOCAB_SIZE,
            hidden_size=self.width,
            intermediate_size=self.ffn,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=self.max_positions,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
            # Untied: costs 66K parameters and keeps every loader's lm_head path the plain one.
            tie_word_embeddings=False,
        )


def byte_tokenizer() -> Any:
    """The byte-level, merge-free tokenizer as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD_ID, "<s>": BOS_ID, "</s>": EOS_ID}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    assert len(vocab) == VOCAB_SIZE
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def new_model(shape: ModelShape, seed: int) -> Any:
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(shape.config())


def save_checkpoint(
    model: Any, tokenizer: Any, out: Path, ponder_json: dict[str, Any], meta: dict[str, Any] | None = None
) -> list[Path]:
    """Save an fp16 HF checkpoint (config, safetensors, tokenizer, ``ponder.json``) under
    ``out``; ``meta`` (the recipe) goes to ``train.json``. Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    half = _copy_half(model)
    half.config.dtype = "float16"
    half.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    (out / "ponder.json").write_text(json.dumps(ponder_json, indent=1, sort_keys=True) + "\n")
    if meta is not None:
        (out / "train.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=_json_default) + "\n")
    return sorted(p for p in out.iterdir() if p.is_file())


def _copy_half(model: Any) -> Any:
    import copy

    half = copy.deepcopy(model)
    return half.half()


def _json_default(o: Any) -> Any:
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_checkpoint(path: Path) -> tuple[Any, Any, Any]:
    """(model fp32 in eval mode, tokenizer, PromptFormat) through ponder's own resolver."""
    from ponder.workers.models import load_hf_model, load_tokenizer, resolve

    files = resolve(str(path))
    return load_hf_model(files), load_tokenizer(files), files.fmt
