"""The generic LLM client against a local OpenAI-compatible server (real HTTP, `openai` package)."""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import types

import pytest

import fakellm
from chimed_pipeline.llm import (
    COMPLETION_TOKENS,
    INVALID_REPLIES,
    PROMPT_TOKENS,
    REQUESTS,
    RETRIES,
    AdaptiveThrottle,
    Counters,
    LlmClient,
    LlmConfig,
    LlmConfigError,
    LlmError,
    RateLimiter,
    add_llm_arguments,
    llm_config_from_args,
    parse_json_content,
    resolve_api_key,
    retry_after_s,
    schema_problems,
    secret_version_name,
)

KEY = fakellm.TEST_KEY
SCHEMA = {
    "type": "object",
    "properties": {"1": {"type": "string"}, "2": {"type": "string"}},
    "required": ["1", "2"],
    "additionalProperties": False,
}
MESSAGES = [
    {"role": "system", "content": "Translate into Chinese."},
    {"role": "user", "content": json.dumps({"1": "Axial CT of the chest.", "2": "Scale bar, 50 μm."})},
]


class FakeClock:
    """Time that moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def fake():
    with fakellm.FakeLlm(slow_s=1.0) as server:
        yield server


def make_client(fake, sleep=None, **overrides) -> LlmClient:
    kwargs = {"sleep": sleep} if sleep else {}
    return LlmClient(fakellm.fast_config(fake, **overrides), KEY, **kwargs)


def test_reply_is_the_validated_json_and_usage_is_counted(fake):
    client = make_client(fake)
    reply = client.request_json(MESSAGES, SCHEMA, name="translations")
    assert set(reply) == {"1", "2"} and all(isinstance(v, str) and v for v in reply.values())
    [request] = fake.requests
    assert request.authorization == f"Bearer {KEY}"
    assert request.body["model"] == "fake-model"
    assert request.body["response_format"]["type"] == "json_schema"
    assert request.body["response_format"]["json_schema"]["schema"] == SCHEMA
    totals = fake.totals()
    assert client.counters.get(REQUESTS) == 1
    assert client.counters.get(PROMPT_TOKENS) == totals["prompt_tokens"] > 0
    assert client.counters.get(COMPLETION_TOKENS) == totals["completion_tokens"] > 0


def test_rate_limit_waits_as_long_as_retry_after_says(fake):
    fake.retry_after = "2"
    slept = []
    client = make_client(fake, sleep=slept.append)
    fake.inject(fakellm.RATE_LIMIT)
    assert set(client.request_json(MESSAGES, SCHEMA)) == {"1", "2"}
    # Retry-After, not the configured 1 ms backoff (later waits: adaptive throttling after the 429).
    assert slept[0] == 2.0 and all(s == 0.001 for s in slept[1:])
    assert client.counters.get(RETRIES) == 1 and client.counters.get(REQUESTS) == 2


@pytest.mark.parametrize("fault", [fakellm.SERVER_ERROR, fakellm.HTML_BODY, fakellm.SLOW])
def test_transient_failures_are_retried(fake, fault):
    client = make_client(fake)
    fake.inject(fault)
    assert set(client.request_json(MESSAGES, SCHEMA)) == {"1", "2"}
    assert client.counters.get(REQUESTS) == 2 and client.counters.get(RETRIES) == 1


def test_persistent_server_errors_give_up_without_splitting(fake):
    client = make_client(fake, max_retries=2)
    fake.inject(*[fakellm.SERVER_ERROR] * 3)
    with pytest.raises(LlmError) as raised:
        client.request_json(MESSAGES, SCHEMA)
    assert not raised.value.splittable
    assert "HTTP 500" in raised.value.detail and "3 attempts" in raised.value.detail
    assert len(fake.requests) == 3


@pytest.mark.parametrize(
    "fault", [fakellm.MISSING_ID, fakellm.EXTRA_ID, fakellm.MERGED_IDS, fakellm.NOT_JSON_CONTENT]
)
def test_a_reply_breaking_the_schema_is_retried_once_then_raised_as_splittable(fake, fault):
    client = make_client(fake)
    fake.inject(fault)
    assert set(client.request_json(MESSAGES, SCHEMA)) == {"1", "2"}
    assert client.counters.get(INVALID_REPLIES) == 1
    fake.inject(fault, fault)
    with pytest.raises(LlmError) as raised:
        client.request_json(MESSAGES, SCHEMA)
    assert raised.value.splittable


def test_a_truncated_reply_is_not_retried_as_is(fake):
    client = make_client(fake)
    fake.inject(fakellm.TRUNCATED)
    with pytest.raises(LlmError) as raised:
        client.request_json(MESSAGES, SCHEMA)
    assert raised.value.splittable and "truncated" in raised.value.detail
    assert len(fake.requests) == 1


def test_a_bad_key_stops_the_run_and_the_key_never_shows(fake, caplog):
    caplog.set_level(logging.DEBUG)
    client = make_client(fake)
    fake.inject(fakellm.UNAUTHORIZED)
    with pytest.raises(LlmConfigError) as raised:
        client.request_json(MESSAGES, SCHEMA)
    assert "401" in str(raised.value)
    fake.inject(fakellm.ECHO_AUTH)  # a server that repeats the Authorization header in its error
    with pytest.raises(LlmError) as raised:
        client.request_json(MESSAGES, SCHEMA)
    assert "[redacted]" in raised.value.detail
    for text in (str(raised.value), raised.value.detail, repr(client), caplog.text):
        assert KEY not in text


def test_json_object_mode_sends_the_schema_in_the_prompt_and_still_validates(fake):
    client = make_client(fake, json_mode="object")
    assert set(client.request_json(MESSAGES, SCHEMA)) == {"1", "2"}
    body = fake.requests[0].body
    assert body["response_format"] == {"type": "json_object"}
    assert json.dumps(SCHEMA) in body["messages"][-1]["content"]
    fake.inject(fakellm.EXTRA_ID, fakellm.EXTRA_ID)
    with pytest.raises(LlmError):
        client.request_json(MESSAGES, SCHEMA)


def test_map_concurrent_keeps_order_and_overlaps_requests(fake):
    fake.delay_s = 0.05
    client = make_client(fake, concurrency=4)
    results = client.map_concurrent(lambda n: (n, client.request_json(MESSAGES, SCHEMA)), range(8))
    client.close()
    assert [n for n, _ in results] == list(range(8))
    assert fake.max_in_flight >= 2


def test_requests_per_minute_limit_spaces_requests():
    clock = FakeClock()
    limiter = RateLimiter(LlmConfig(requests_per_minute=60), clock, clock.sleep)
    for _ in range(20):
        limiter.acquire(tokens=10)
    # A burst of ten seconds' worth (10 requests), then one a second.
    assert 9.0 < sum(clock.slept) < 11.0


def test_tokens_per_minute_limit_counts_what_the_server_reports():
    clock = FakeClock()
    limiter = RateLimiter(LlmConfig(tokens_per_minute=600), clock, clock.sleep)  # 10 tokens/s
    assert limiter.acquire(tokens=100) == 0  # within the ten-second burst
    limiter.settle(estimated=100, actual=300)  # the reply used more than estimated
    waited = limiter.acquire(tokens=100)
    assert 19.0 < waited < 21.0  # 200 tokens overdrawn at 10 tokens/s


def test_adaptive_throttle_holds_requests_back_only_while_the_endpoint_fails():
    clock = FakeClock()
    throttle = AdaptiveThrottle(LlmConfig(throttle_delay_s=1.0), clock, clock.sleep, random.Random(0))
    for _ in range(8):  # requests in flight are not failures
        assert throttle.wait() == 0
    for _ in range(50):
        throttle.record(accepted=True)
        assert throttle.wait() == 0
    for _ in range(150):  # the endpoint starts failing: half the new requests wait (seeded draw)
        throttle.record(accepted=False)
    assert sum(throttle.wait() for _ in range(10)) > 0
    clock.now += 120  # the failures leave the one-minute window
    assert throttle.wait() == 0


def test_schema_problems_names_what_is_wrong():
    assert schema_problems({"1": "a", "2": "b"}, SCHEMA) == []
    assert schema_problems({"1": "a"}, SCHEMA) == ["$: missing '2'"]
    assert schema_problems({"1": "a", "2": "b", "1,2": "c"}, SCHEMA) == ["$: unexpected '1,2'"]
    assert schema_problems({"1": "a", "2": 3}, SCHEMA) == ["$.2: expected string"]
    assert schema_problems(["a"], SCHEMA) == ["$: expected object"]
    nested = {"type": "array", "items": {"type": "string", "enum": ["x"]}}
    assert schema_problems(["x", "y"], nested) == ["$[1]: not one of the allowed values"]


def test_reply_content_parsing_and_retry_after_headers():
    assert parse_json_content('```json\n{"1": "x"}\n```') == {"1": "x"}
    with pytest.raises(ValueError):
        parse_json_content('["x"]')
    assert retry_after_s({"Retry-After": "3"}) == 3.0
    assert retry_after_s({"retry-after-ms": "250", "Retry-After": "1"}) == 0.25
    assert retry_after_s({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert retry_after_s({"Retry-After": "soon"}) is None
    assert retry_after_s({}) is None


def test_counters_drain_hands_out_increments_once():
    counters = Counters()
    counters.inc(REQUESTS, 3)
    assert counters.drain() == {REQUESTS: 3}
    counters.inc(REQUESTS)
    assert counters.drain() == {REQUESTS: 1} and counters.drain() == {}
    assert counters.snapshot() == {REQUESTS: 4}


def test_api_key_comes_from_the_environment_or_secret_manager(monkeypatch):
    assert resolve_api_key(LlmConfig(model="m"), {"OPENAI_API_KEY": KEY}) == KEY
    with pytest.raises(LlmConfigError, match="OPENAI_API_KEY"):
        resolve_api_key(LlmConfig(model="m"), {})

    asked = []

    class FakeSecretClient:
        def access_secret_version(self, name):
            asked.append(name)
            payload = types.SimpleNamespace(data=(KEY + "\n").encode())
            return types.SimpleNamespace(payload=payload)

    secretmanager = types.SimpleNamespace(SecretManagerServiceClient=FakeSecretClient)
    cloud = types.ModuleType("google.cloud")
    cloud.secretmanager = secretmanager
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.cloud", cloud)
    monkeypatch.setitem(sys.modules, "google.cloud.secretmanager", secretmanager)
    config = LlmConfig(model="m", api_key_secret="projects/p/secrets/llm-key")
    assert resolve_api_key(config, {}) == KEY
    assert asked == ["projects/p/secrets/llm-key/versions/latest"]
    assert secret_version_name("projects/p/secrets/s/versions/3") == "projects/p/secrets/s/versions/3"
    with pytest.raises(LlmConfigError):
        secret_version_name("llm-key")


def test_flags_build_a_config_that_holds_no_key():
    parser = argparse.ArgumentParser()
    add_llm_arguments(parser)
    args = parser.parse_args(
        ["--llm-model", "qwen", "--llm-api-key-secret", "projects/p/secrets/k", "--llm-requests-per-minute", "500"]
    )
    config = llm_config_from_args(args)
    assert config.model == "qwen" and config.requests_per_minute == 500 and config.enabled
    assert not any("key" in action.dest and "secret" not in action.dest for action in parser._actions)
    assert not llm_config_from_args(parser.parse_args(["--llm-model", "qwen", "--llm-dry-run"])).enabled
