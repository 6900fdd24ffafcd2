"""A provider key the client brings is a credential only where a provider takes one.

With ``client.allow_direct_keys``, a Bearer token that is no virtual key is
sent upstream in place of ours. A made-up one used to open every provider
that ignores keys (the embedded model, a keyless vLLM) to anyone, past
``enforce_auth_on_inference`` and every limit.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.client import ProxyFactory, form, post
from tests.helpers.errors import assert_error
from tests.helpers.upstream import UPSTREAM_KEY, FakeUpstream

MADE_UP = "Bearer made-up-provider-key-0123"


def direct_keys(upstream: FakeUpstream, *, enforce: bool) -> dict[str, Any]:
    """``openai`` with a key of ours, ``vllm`` with none, ``local``; direct keys allowed."""
    return {
        "client": {"allow_direct_keys": True, "enforce_auth_on_inference": enforce},
        "providers": {
            "openai": {
                "keys": [{"value": UPSTREAM_KEY}],
                "network_config": {"base_url": upstream.base_url},
            },
            "vllm": {
                "keys": [],
                "custom_provider_config": {"base_provider_type": "openai"},
                "network_config": {"base_url": upstream.base_url},
            },
            "local": {},
        },
    }


@pytest.mark.parametrize("model", ["vllm/whisper-large-v3", "local/tiny.en"])
async def test_a_made_up_key_opens_no_provider_that_takes_none(
    make_proxy: ProxyFactory, upstream: FakeUpstream, model: str
) -> None:
    server = await make_proxy(direct_keys(upstream, enforce=True))
    status, body, _ = await post(
        server, form(("model", model), ("file", b"RIFF")), {"Authorization": MADE_UP}
    )
    assert status == 401
    assert_error(
        body, status=401, code="direct_key_not_accepted", error_type="authentication_error"
    )
    assert upstream.requests == []


async def test_a_fallback_that_takes_no_key_is_refused_too(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(direct_keys(upstream, enforce=True))
    status, _, _ = await post(
        server,
        form(("model", "openai/whisper-1"), ("fallbacks[]", "vllm/x"), ("file", b"RIFF")),
        {"Authorization": MADE_UP},
    )
    assert status == 401
    assert upstream.requests == []


async def test_a_direct_key_still_serves_where_it_is_the_credential(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(direct_keys(upstream, enforce=True))
    status, _, _ = await post(
        server, form(("model", "openai/whisper-1"), ("file", b"RIFF")), {"Authorization": MADE_UP}
    )
    assert status == 200
    assert upstream.last.headers["Authorization"] == MADE_UP  # theirs, not ours


async def test_without_required_credentials_the_key_is_not_sent_where_none_is_taken(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(direct_keys(upstream, enforce=False))
    status, _, _ = await post(
        server, form(("model", "vllm/x"), ("file", b"RIFF")), {"Authorization": MADE_UP}
    )
    assert status == 200  # anyone may call: the caller is anonymous there
    assert "Authorization" not in upstream.last.headers
