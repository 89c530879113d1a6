"""An exact-match response cache: same tenant, prompt, parameters and routing options."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from tierlm.v1 import generator_pb2, router_pb2


def cache_key(tenant: str, request: router_pb2.CompleteRequest) -> str | None:
    """The key, or None for requests whose answer is not reproducible (sampled without a seed)."""
    inner = request.request
    if inner.temperature > 0 and not inner.HasField("seed"):
        return None
    keyed = router_pb2.CompleteRequest()
    keyed.CopyFrom(request)
    keyed.request.request_id = ""
    keyed.request.tenant = ""
    return hashlib.sha256(tenant.encode() + b"\0" + keyed.SerializeToString(deterministic=True)).hexdigest()


class ResponseCache:
    """LRU with a time-to-live; bounded by entry count."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, generator_pb2.GenerateResponse]] = OrderedDict()

    def get(self, key: str) -> generator_pb2.GenerateResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, answer = entry
        if self._clock() - stored_at > self.ttl_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer

    def put(self, key: str, answer: generator_pb2.GenerateResponse) -> None:
        self._entries[key] = (self._clock(), answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
