"""A tiny llama GGUF written with the `gguf` package, for tests of GGUF loading and conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY = {"hidden": 32, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 64, "context": 256}
# A byte-level BPE vocabulary: the 256 byte symbols, a few merges and an end-of-text token.
_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]


def _byte_symbols() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def write_tiny_llama_gguf(path: Path, seed: int = 0) -> Path:
    """Write a 2-layer llama GGUF (F32 tensors, tied embeddings, byte-level BPE tokenizer)."""
    import gguf

    tokens = _byte_symbols() + [m.replace(" ", "") for m in _MERGES] + ["<|endoftext|>"]
    vocab = len(tokens)
    eot = vocab - 1
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(TINY["context"])
    writer.add_embedding_length(TINY["hidden"])
    writer.add_block_count(TINY["layers"])
    writer.add_feed_forward_length(TINY["ffn"])
    writer.add_head_count(TINY["heads"])
    writer.add_head_count_kv(TINY["kv_heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (vocab - 1) + [3])  # 1 normal, 3 control
    writer.add_token_merges(_MERGES)
    writer.add_bos_token_id(eot)
    writer.add_eos_token_id(eot)
    writer.add_add_bos_token(False)

    rng = np.random.default_rng(seed)
    h, kv = TINY["hidden"], TINY["hidden"] * TINY["kv_heads"] // TINY["heads"]

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(vocab, h))
    for layer in range(TINY["layers"]):
        prefix = f"blk.{layer}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", 1 + weight(h))
        writer.add_tensor(f"{prefix}.attn_q.weight", weight(h, h))
        writer.add_tensor(f"{prefix}.attn_k.weight", weight(kv, h))
        writer.add_tensor(f"{prefix}.attn_v.weight", weight(kv, h))
        writer.add_tensor(f"{prefix}.attn_output.weight", weight(h, h))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", 1 + weight(h))
        writer.add_tensor(f"{prefix}.ffn_gate.weight", weight(TINY["ffn"], h))
        writer.add_tensor(f"{prefix}.ffn_up.weight", weight(TINY["ffn"], h))
        writer.add_tensor(f"{prefix}.ffn_down.weight", weight(h, TINY["ffn"]))
    writer.add_tensor("output_norm.weight", 1 + weight(h))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
