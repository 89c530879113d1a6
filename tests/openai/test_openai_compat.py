"""The OpenAI endpoint as the `openai` package sees it, against a real router process and scripted
tiers: chat and completions, streaming, errors, and model names routed by the policy."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.support.policies import tenants, two_tier_policy, write
from tests.support.router_process import RouterProcess, scripted_tiers

KEYS = {"acme": "acme-key", "broke": "broke-key"}
MODELS = {
    "tierlm": {},
    "tierlm-edge": {"force_tier": "edge"},
    "tierlm-capped": {"max_tier": "edge", "default_max_tokens": 64},
}


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    work = tmp_path_factory.mktemp("openai")
    with scripted_tiers("edge", "cloud") as ports:
        policy = two_tier_policy(ports["edge"], ports["cloud"], models=MODELS)
        policy["tenants"] = {**tenants({"acme": KEYS["acme"]}), **tenants({"broke": KEYS["broke"]}, budget_per_day=0.0)}
        with RouterProcess(write(work / "policy.yaml", policy), work / "ledger.sqlite", http=True) as process:
            yield process


@pytest.fixture
def client(router):
    with openai.OpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key=KEYS["acme"], max_retries=0) as oai:
        yield oai


def raw(router, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEYS['acme']}", **kwargs.pop("headers", {})}
    return httpx.request(method, f"http://127.0.0.1:{router.http_port}{path}", headers=headers, timeout=30, **kwargs)


def assert_openai_shape(body: dict, model: type) -> None:
    """Every field the response has is one the openai type defines (plus our `tierlm` extension)."""
    parsed = model.model_validate(body)
    assert set(parsed.model_extra or {}) <= {"tierlm"}, parsed.model_extra


def test_chat_takes_content_parts_and_every_role(client, router):
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": [{"type": "text", "text": "you route"}]},
        {"role": "user", "content": [{"type": "text", "text": "an easy "}, {"type": "text", "text": "one"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "tool", "content": "42", "tool_call_id": "call-1"},
    ]
    chat = client.chat.completions.create(model="tierlm", messages=messages, max_completion_tokens=4)
    assert chat.choices[0].message.content == (
        "edge: system=be brief | system=you route | user=an easy one | assistant=ok | tool=42")
    assert chat.model == "tierlm" and chat.object == "chat.completion" and chat.choices[0].finish_reason == "stop"
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    body = raw(router, "POST", "/v1/chat/completions", json={"model": "tierlm", "messages": messages}).json()
    assert_openai_shape(body, ChatCompletion)
    assert body["tierlm"]["tiers"] == ["edge"]


def test_completions_take_a_list_of_prompts_and_n(client, router):
    listed = client.completions.create(model="tierlm", prompt=["an easy one", "a hard one"], max_tokens=4)
    assert [(c.index, c.text) for c in listed.choices] == [(0, "edge: an easy one"), (1, "cloud: a hard one")]
    repeated = client.chat.completions.create(model="tierlm-edge", messages=[{"role": "user", "content": "hi"}], n=3)
    assert [c.index for c in repeated.choices] == [0, 1, 2]
    assert {c.message.content for c in repeated.choices} == {"edge: user=hi"}
    body = raw(router, "POST", "/v1/completions", json={"model": "tierlm", "prompt": ["an easy one"], "n": 2}).json()
    assert_openai_shape(body, Completion)
    assert len(body["choices"]) == 2


def test_token_limits_defaults_and_max_completion_tokens(client):
    ask = [{"role": "user", "content": "max_tokens?"}]
    assert client.chat.completions.create(model="tierlm-edge", messages=ask).choices[0].message.content == "edge: 256"
    assert client.chat.completions.create(model="tierlm-capped", messages=ask).choices[0].message.content == "edge: 64"
    limited = client.chat.completions.create(model="tierlm-edge", messages=ask, max_completion_tokens=7)
    assert limited.choices[0].message.content == "edge: 7"
    assert client.completions.create(model="tierlm-edge", prompt="max_tokens?").choices[0].text == "edge: 16"
    with pytest.raises(openai.BadRequestError, match="disagree"):
        client.chat.completions.create(model="tierlm-edge", messages=ask, max_tokens=5, max_completion_tokens=6)


def test_logprobs_are_returned_when_asked(client):
    chat = client.chat.completions.create(model="tierlm-edge", messages=[{"role": "user", "content": "easy"}], logprobs=True)
    (token,) = chat.choices[0].logprobs.content
    assert token.token == "x" and token.logprob == pytest.approx(-0.01) and token.top_logprobs == []
    text = client.completions.create(model="tierlm-edge", prompt="easy", logprobs=0)
    assert text.choices[0].logprobs.token_logprobs == [pytest.approx(-0.01)]
    assert client.completions.create(model="tierlm-edge", prompt="easy").choices[0].logprobs is None


@pytest.mark.parametrize("extra, message", [
    ({"logprobs": True, "top_logprobs": 3}, "top_logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "does not support tools"),
    ({"response_format": {"type": "json_object"}}, "does not support response_format"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
])
def test_what_cannot_be_honoured_is_refused(client, extra, message):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tierlm", messages=[{"role": "user", "content": "hi"}], **extra)
    assert message in str(refused.value)
    assert refused.value.body["type"] == "invalid_request_error"


def test_image_parts_and_token_prompts_are_refused(client):
    with pytest.raises(openai.BadRequestError, match="image_url"):
        client.chat.completions.create(model="tierlm", messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tierlm", prompt=[[1, 2, 3]])
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="tierlm", prompt="hi", logprobs=2)


def test_every_4xx_is_openais_error_object(router):
    cases = [
        raw(router, "POST", "/v1/completions", json={"model": "gpt-4o", "prompt": "hi"}),
        raw(router, "POST", "/v1/completions", json={"prompt": "hi"}),
        raw(router, "POST", "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}),
        raw(router, "POST", "/v1/completions", json={"model": "tierlm", "prompt": "hi", "bogus": 1}),
        raw(router, "GET", "/v1/nothing-here"),
        raw(router, "GET", "/v1/completions"),
        raw(router, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"}),
    ]
    assert [r.status_code for r in cases] == [404, 400, 400, 400, 404, 405, 401]
    for response in cases:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], response.text
    assert cases[0].json()["error"]["code"] == "model_not_found"
    assert cases[3].json()["error"]["message"] == "Unrecognized request argument supplied: bogus"


def test_model_names_select_routes(client):
    hard = [{"role": "user", "content": "a hard one"}]
    assert client.chat.completions.create(model="tierlm", messages=hard).model_extra["tierlm"]["tiers"] == ["cloud"]
    assert client.chat.completions.create(model="tierlm-edge", messages=hard).model_extra["tierlm"]["tiers"] == ["edge"]
    assert client.chat.completions.create(model="tierlm-capped", messages=hard).model_extra["tierlm"]["tiers"] == ["edge"]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=hard)
    assert unknown.value.code == "model_not_found"


def test_models_lists_the_routes_and_needs_a_key(client, router):
    assert sorted(m.id for m in client.models.list()) == sorted(MODELS)
    assert client.models.retrieve("tierlm-edge").id == "tierlm-edge"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    keyless = httpx.get(f"http://127.0.0.1:{router.http_port}/v1/models")
    assert keyless.status_code == 401


def test_chat_streams_are_shaped_as_openais_chunks(client):
    stream = client.chat.completions.create(model="tierlm", messages=[{"role": "user", "content": "a hard one"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks: list[ChatCompletionChunk] = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id} and {c.model for c in chunks} == {"tierlm"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == "cloud: user=a hard one"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_streams(client):
    chunks = list(client.completions.create(model="tierlm-edge", prompt="stream these words", max_tokens=8, stream=True))
    assert "".join(c.choices[0].text for c in chunks).strip() == "edge: stream these words"
    assert chunks[-1].choices[0].finish_reason == "stop" and all(c.object == "text_completion" for c in chunks)


def test_a_spent_budget_is_insufficient_quota_with_retry_after_and_no_retry(router):
    broke = openai.OpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key=KEYS["broke"], max_retries=3)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as refused:
        broke.chat.completions.create(model="tierlm", messages=[{"role": "user", "content": "hi"}])
    assert time.monotonic() - started < 1.0  # the SDK did not back off and retry three times
    response = refused.value.response
    assert refused.value.code == "insufficient_quota" and refused.value.type == "insufficient_quota"
    assert 0 < int(response.headers["retry-after"]) <= 86_400
    assert response.headers["x-should-retry"] == "false"


def test_feedback_over_http(router):
    """POST /v1/feedback takes the request id a response names; the Feedback contract's codes
    come back as OpenAI-shaped errors."""
    body = raw(router, "POST", "/v1/chat/completions", json={"model": "tierlm", "messages": [{"role": "user", "content": "an easy one"}]}).json()
    (request_id,) = body["tierlm"]["request_ids"]
    given = raw(router, "POST", "/v1/feedback", json={"request_id": request_id, "correct": True})
    assert given.status_code == 200 and given.json() == {"request_id": request_id, "stored": True}
    assert raw(router, "POST", "/v1/feedback", json={"request_id": request_id, "score": 0.2}).json()["stored"] is False
    other = raw(router, "POST", "/v1/feedback", json={"request_id": request_id, "correct": False},
                headers={"Authorization": f"Bearer {KEYS['broke']}"})
    assert other.status_code == 403 and "feedback only on your own requests" in other.json()["error"]["message"]
    assert raw(router, "POST", "/v1/feedback", json={"request_id": "nope", "correct": True}).status_code == 404
    both = raw(router, "POST", "/v1/feedback", json={"request_id": request_id, "correct": True, "score": 1.0})
    assert both.status_code == 400 and "exactly one of correct, score or reference" in both.json()["error"]["message"]
    keyless = httpx.post(f"http://127.0.0.1:{router.http_port}/v1/feedback", json={"request_id": request_id, "correct": True})
    assert keyless.status_code == 401
