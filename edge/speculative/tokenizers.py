"""Whether two models share a tokenizer: a draft token id must mean the same text to the verifier.

A fingerprint hashes the vocabulary (every token with its id) and the special tokens' ids; two
models with equal fingerprints turn the same text into the same ids. A compressed artifact
carries its source model's tokenizer files, so it matches its source.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


def fingerprint(tokenizer) -> str:
    """A short hex digest of ``tokenizer``'s vocabulary and special-token ids."""
    digest = hashlib.sha256()
    for token, token_id in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        digest.update(f"{token_id}\t{token}\n".encode("utf-8", "surrogatepass"))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        digest.update(f"{name}={getattr(tokenizer, name, None)}\n".encode())
    return digest.hexdigest()[:16]


def model_folder(model: str, cache_dir: str | Path | None = None) -> Path:
    """The folder holding ``model``'s tokenizer: a catalog name's prepared folder, or the folder
    itself (an HF folder or a tierlm artifact). FileNotFoundError says how to make it exist."""
    from tierlm.edge import catalog

    if model in catalog.MODELS:
        folder = catalog.prepared_dir(model, cache_dir)
        if not catalog.is_prepared(folder):
            raise FileNotFoundError(f"model {model!r} is not prepared on this machine; run `tierlm model prepare {model}`")
        return folder
    folder = Path(model).expanduser()
    if not (folder / "tokenizer_config.json").is_file() and not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} holds no tokenizer files (tokenizer.json / tokenizer_config.json)")
    return folder


def model_fingerprint(model: str, cache_dir: str | Path | None = None) -> str:
    """The tokenizer fingerprint of a model named as a policy's tier names it."""
    folder = model_folder(model, cache_dir).resolve()
    stamp = tuple((f.name, f.stat().st_mtime_ns) for f in sorted(folder.glob("tokenizer*")))
    return _folder_fingerprint(folder, stamp)


@functools.lru_cache(maxsize=16)
def _folder_fingerprint(folder: Path, stamp: tuple) -> str:
    # `stamp` (the tokenizer files' names and times) is only part of the cache key.
    from transformers import AutoTokenizer

    return fingerprint(AutoTokenizer.from_pretrained(str(folder)))
