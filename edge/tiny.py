"""Tiny random models saved as HF folders (config, safetensors, tokenizer), built offline.

For tests and benchmarks of anything that loads a model folder: a byte-level BPE tokenizer
trained on a few sentences, and a Llama or Gemma 3 text decoder with random weights.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The market rose today as investors cheered strong earnings.",
    "Gold prices fell sharply after the central bank raised rates.",
    "Oil futures were steady while traders waited for new data.",
    "Shares of tech companies climbed to a record high on Monday.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Headlines: stocks up, bonds down, and the dollar unchanged.",
] * 20

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(path: Path, vocab_size: int = 384):
    """A byte-level BPE trained on a few sentences: encodes any text, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", chat_template=CHAT_TEMPLATE
    )
    fast.save_pretrained(path)
    return fast


def build_model(
    path: Path,
    family: str,
    *,
    hidden_size: int = 64,
    num_layers: int | None = None,
    sliding_window: int = 6,
    seed: int = 0,
):
    """Save a random model of `family` ("llama" or "gemma3") with a tokenizer to `path`.

    Returns the transformers model and tokenizer. Defaults are test-sized; by default Llama
    has 2 layers and Gemma 6 (five sliding-window layers, then a global one).
    """
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(path)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_attention_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
        # A wider init than the default 0.02 makes the random model's greedy choices decisive
        # (large logit gaps), so batched and unbatched arithmetic pick the same tokens.
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    if family == "llama":
        config = LlamaConfig(**common, num_hidden_layers=num_layers or 2, num_key_value_heads=2)
        model = LlamaForCausalLM(config)
    else:
        config = Gemma3TextConfig(
            **common,
            num_hidden_layers=num_layers or 6,
            num_key_value_heads=1,
            head_dim=hidden_size // 2,
            query_pre_attn_scalar=24,
            sliding_window=sliding_window,
        )
        model = Gemma3ForCausalLM(config)
        # Gemma norms are x*(1+w) with w initialised to 0; random offsets exercise them.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.normal_(0.0, 0.3)
    model.eval()
    model.save_pretrained(path)
    return model, tokenizer
