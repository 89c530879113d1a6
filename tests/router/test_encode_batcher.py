"""The router's encode batcher: concurrent texts share one encode call, and their similarities to
the retrieval pools come with the batch, one product per pool."""

from __future__ import annotations

import asyncio

import numpy as np

from tierlm.router.embeddings import Similarities
from tierlm.router.serve.batcher import EncodeBatcher
from tierlm.router.serve.query import RequestQuery


class Hashing:
    """A deterministic stand-in encoder: unit vectors from a seeded generator per text."""

    model_id = "hashing"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        rows = [np.random.default_rng(sum(map(ord, text))).standard_normal(16) for text in texts]
        return np.stack([row / np.linalg.norm(row) for row in rows]).astype(np.float32)


class Counting(Similarities):
    def __init__(self, rows: np.ndarray) -> None:
        super().__init__(rows)
        self.products = 0

    def __call__(self, queries: np.ndarray) -> np.ndarray:
        self.products += 1
        return super().__call__(queries)


def pool(seed: int, n: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, 16))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_concurrent_texts_share_one_encode_and_one_product_per_pool() -> None:
    encoder, first, second = Hashing(), Counting(pool(1, 50)), Counting(pool(2, 30))
    batcher = EncodeBatcher(encoder)
    asks = [("gold up", (first,)), ("oil down", (second, first)), ("no pools", ()), ("both again", (first, second))]

    async def together():
        return await asyncio.gather(*(batcher.embed_compared(text, pools) for text, pools in asks))

    results = asyncio.run(together())
    batcher.close()
    assert len(encoder.calls) == 1 and batcher.batches == 1
    assert (first.products, second.products) == (1, 1)  # each pool read once for the whole batch
    for (text, pools), (embedding, rows) in zip(asks, results):
        np.testing.assert_allclose(embedding, Hashing().encode([text])[0])
        assert len(rows) == len(pools)  # in the order asked
        for index, row in zip(pools, rows):
            np.testing.assert_allclose(row, index.rows @ embedding, atol=1e-5)


def test_a_request_query_reads_its_similarities_from_the_batch() -> None:
    encoder, index, other = Hashing(), Similarities(pool(3, 40)), Similarities(pool(4, 40))
    batcher = EncodeBatcher(encoder)
    query = RequestQuery("copper slips", compare=batcher.embed_compared, pools=(index,))

    async def embed() -> np.ndarray:
        return await query.embedded()

    embedding = asyncio.run(embed())
    batcher.close()
    np.testing.assert_allclose(query.similarity(index), index.rows @ embedding, atol=1e-5)
    assert query.similarity(other) is None and query.similarity(None) is None
    assert query.embedding() is embedding
