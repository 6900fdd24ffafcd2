"""The router without sockets: which provider serves a model string (README, "API")."""

from __future__ import annotations

import pytest

from proxy.errors import InvalidRequestError, ServiceUnavailableError
from proxy.router import REMEMBERED_ROUTES, Router
from tests.helpers.providers import ScriptedProvider


def router(*providers: ScriptedProvider) -> Router:
    return Router({p.name: p for p in providers})


def test_provider_slash_model_goes_to_that_provider() -> None:
    groq = ScriptedProvider("groq")
    route = router(ScriptedProvider("openai"), groq).resolve("groq/whisper-large-v3")
    assert (route.provider, route.model, route.requested) == (
        groq,
        "whisper-large-v3",
        "groq/whisper-large-v3",
    )


def test_a_bare_name_goes_to_the_provider_whose_keys_list_it() -> None:
    groq = ScriptedProvider("groq", models=["whisper-large-v3"])
    route = router(ScriptedProvider("openai"), groq).resolve("whisper-large-v3")
    assert route.provider is groq
    assert route.model == "whisper-large-v3"


def test_a_bare_name_nobody_lists_goes_to_openai() -> None:
    openai = ScriptedProvider("openai")
    assert router(openai, ScriptedProvider("groq")).resolve("whisper-1").provider is openai


def test_a_bare_name_goes_to_the_only_provider() -> None:
    local = ScriptedProvider("local")
    assert router(local).resolve("anything").provider is local


def test_a_prefix_that_is_no_provider_is_part_of_a_bare_name() -> None:
    openai = ScriptedProvider("openai")
    route = router(openai).resolve("Systran/faster-whisper-small")
    assert (route.provider, route.model) == (openai, "Systran/faster-whisper-small")


def test_a_name_listed_by_a_provider_wins_over_its_prefix() -> None:
    # "openai/x" listed by groq's keys as a model name is groq's.
    groq = ScriptedProvider("groq", models=["openai/whisper"])
    route = router(ScriptedProvider("openai"), groq).resolve("openai/whisper")
    assert route.provider is groq
    assert route.model == "openai/whisper"


def test_a_name_two_providers_list_is_refused_as_ambiguous() -> None:
    a = ScriptedProvider("a", models=["shared"])
    b = ScriptedProvider("b", models=["shared"])
    with pytest.raises(InvalidRequestError, match="several providers") as raised:
        router(a, b).resolve("shared")
    assert (raised.value.code, raised.value.param) == ("ambiguous_model", "model")


def test_a_bare_name_with_no_openai_and_several_providers_names_the_candidates() -> None:
    with pytest.raises(InvalidRequestError, match="with one of: a, b") as raised:
        router(ScriptedProvider("a"), ScriptedProvider("b")).resolve("whisper-1")
    assert raised.value.code == "model_not_found"


def test_no_provider_at_all_is_a_503() -> None:
    with pytest.raises(ServiceUnavailableError) as raised:
        router().resolve("whisper-1")
    assert raised.value.code == "no_provider"


def test_plan_is_the_primary_then_each_fallback_in_order() -> None:
    openai, groq = ScriptedProvider("openai"), ScriptedProvider("groq")
    routes = router(openai, groq).plan("whisper-1", ["groq/whisper-large-v3", "openai/other"])
    assert [(r.provider, r.model) for r in routes] == [
        (openai, "whisper-1"),
        (groq, "whisper-large-v3"),
        (openai, "other"),
    ]


def test_a_fallback_that_does_not_resolve_names_the_fallback() -> None:
    a, b = ScriptedProvider("a"), ScriptedProvider("b")
    with pytest.raises(InvalidRequestError, match="fallback whisper-1:") as raised:
        router(a, b).plan("a/whisper-1", ["whisper-1"])
    assert raised.value.param == "fallbacks"


def test_routes_are_remembered_up_to_a_bound() -> None:
    the_router = router(ScriptedProvider("openai"))
    first = the_router.resolve("whisper-1")
    assert the_router.resolve("whisper-1") is first  # from memory, not worked out again
    for n in range(REMEMBERED_ROUTES + 10):
        the_router.resolve(f"generated-{n}")
    late = the_router.resolve(f"generated-{REMEMBERED_ROUTES + 5}")
    assert the_router.resolve(f"generated-{REMEMBERED_ROUTES + 5}") is not late
    assert the_router.resolve(f"generated-{REMEMBERED_ROUTES + 5}") == late
