"""The SDK takes OpenAI-style message dicts as well as (role, content) pairs, and refuses what it
cannot send instead of sending something else."""

from __future__ import annotations

import pytest

from tierlm.client import build_request


def turns(request) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in request.request.messages.messages]


def test_dicts_pairs_and_text_parts_give_the_same_turns():
    as_pairs = build_request(messages=[("system", "be brief"), ("user", "hi there")])
    as_dicts = build_request(messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
    ])
    assert turns(as_pairs) == turns(as_dicts) == [("system", "be brief"), ("user", "hi there")]


@pytest.mark.parametrize("message, error", [
    ({"role": "user"}, "needs 'role' and 'content'"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, "only text content parts"),
    (("user", "hi", "extra"), "a message is a"),
    ("user: hi", "a message is a"),
    ({"role": "user", "content": 42}, "must be text"),
])
def test_messages_that_cannot_be_sent_are_refused(message, error):
    with pytest.raises(ValueError, match=error):
        build_request(messages=[message])
