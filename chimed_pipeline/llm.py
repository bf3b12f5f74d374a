"""A client for any OpenAI-compatible chat-completions endpoint that asks for JSON and gets it.

Generic machinery shared by every LLM use (translation, QA generation): configuration and flags,
the API key (environment or Secret Manager, never in options, logs or errors), structured-output
requests validated against their JSON Schema, retries with backoff that honour `Retry-After`,
per-worker request and token budgets, client-side adaptive throttling (the algorithm behind Beam's
RemoteModelHandler), a thread pool for concurrent requests, and cost counters a DoFn publishes
as Beam metrics. What to ask and how to judge the answer belongs to the callers.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import email.utils
import json
import logging
import math
import os
import random
import re
import threading
import time
from typing import Callable, Generic, Iterable, Mapping, Sequence, TypeVar

LOG = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
JSON_SCHEMA_MODE = "schema"  # response_format {"type": "json_schema"}: the server enforces the schema
JSON_OBJECT_MODE = "object"  # response_format {"type": "json_object"}: for servers without json_schema
DETAIL_MAX_CHARS = 200
RETRY_AFTER_MAX_S = 600.0  # a server asking for more than this is treated as asking for this

# Cost counters (names of Beam counters once a DoFn publishes them).
REQUESTS = "llm.requests"  # every HTTP attempt, retries included
PROMPT_TOKENS = "llm.prompt_tokens"
COMPLETION_TOKENS = "llm.completion_tokens"
RETRIES = "llm.retries"  # attempts repeated after a transient failure or an invalid reply
INVALID_REPLIES = "llm.invalid_replies"  # replies that were not JSON or broke the schema
FAILED_REQUESTS = "llm.failed_requests"  # requests given up on (LlmError raised)
THROTTLED_MS = "llm.throttled_ms"  # time spent waiting on rate limits and adaptive throttling
SPLITS = "llm.splits"  # failed batches split in halves
ITEM_FRAMING_TOKENS = 6  # a key, quotes, colon and comma around each item in a JSON object


class LlmError(Exception):
    """A request that produced no usable reply, after its retries.

    `splittable`: sending fewer items might succeed (an invalid or truncated reply, a request the
    server refused as too large, a timeout); not so for an overloaded or failing server.
    """

    def __init__(self, detail: str, *, splittable: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.splittable = splittable


class LlmConfigError(Exception):
    """The endpoint cannot be used at all (no key, bad key, unknown model): stop instead of
    rejecting every record of the run."""


@dataclasses.dataclass(frozen=True)
class LlmConfig:
    """Everything about the endpoint except the key (which must never reach pipeline options)."""

    model: str = ""
    base_url: str = ""  # "" -> OPENAI_BASE_URL, else the openai package's default
    api_key_secret: str = ""  # Secret Manager name; "" -> OPENAI_API_KEY
    dry_run: bool = False  # estimate requests and tokens, call nothing
    json_mode: str = JSON_SCHEMA_MODE
    temperature: float = 0.0
    timeout_s: float = 120.0
    max_retries: int = 6  # transient failures (429, 5xx, timeouts, non-JSON bodies) per request
    invalid_reply_retries: int = 1  # replies breaking the schema, per request, before giving up
    backoff_s: float = 1.0  # first retry waits up to this (full jitter), doubling each time
    backoff_max_s: float = 60.0
    concurrency: int = 8  # requests in flight per worker (DoFn instance)
    requests_per_minute: float = 0.0  # per worker; 0 = no limit
    tokens_per_minute: float = 0.0  # per worker, prompt + completion; 0 = no limit
    batch_items: int = 32  # items per request at most
    batch_tokens: int = 2000  # estimated source tokens per request at most
    throttle_delay_s: float = 1.0  # wait when adaptive throttling holds a request back
    throttle_overload_ratio: float = 2.0  # Beam's default "K": requests allowed per success

    @property
    def enabled(self) -> bool:
        return bool(self.model) and not self.dry_run


def add_llm_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--llm-*` flags, shared by every command that calls an LLM."""
    group = parser.add_argument_group("LLM (any OpenAI-compatible endpoint; used only with --llm-model)")
    default = LlmConfig()
    group.add_argument("--llm-model", default="", help="model name; without it no LLM is called")
    group.add_argument("--llm-base-url", default="", help=f"endpoint (default: ${BASE_URL_ENV}, else OpenAI)")
    group.add_argument(
        "--llm-api-key-secret",
        default="",
        help="Secret Manager secret holding the API key, read on the workers "
        "(projects/P/secrets/S[/versions/V]; needs the gcp extra); default: $" + API_KEY_ENV,
    )
    group.add_argument(
        "--llm-dry-run", action="store_true", help="estimate requests and tokens without calling anything"
    )
    group.add_argument(
        "--llm-json-mode",
        choices=(JSON_SCHEMA_MODE, JSON_OBJECT_MODE),
        default=default.json_mode,
        help="response_format json_schema (default) or json_object for servers without json_schema",
    )
    group.add_argument("--llm-temperature", type=float, default=default.temperature)
    group.add_argument("--llm-timeout", type=float, default=default.timeout_s, help="seconds per request")
    group.add_argument("--llm-max-retries", type=int, default=default.max_retries)
    group.add_argument("--llm-concurrency", type=int, default=default.concurrency, help="requests in flight per worker")
    group.add_argument(
        "--llm-requests-per-minute", type=float, default=default.requests_per_minute, help="per worker; 0: no limit"
    )
    group.add_argument(
        "--llm-tokens-per-minute", type=float, default=default.tokens_per_minute, help="per worker; 0: no limit"
    )
    group.add_argument("--llm-batch-items", type=int, default=default.batch_items, help="items per request at most")
    group.add_argument(
        "--llm-batch-tokens", type=int, default=default.batch_tokens, help="estimated input tokens per request at most"
    )


def llm_config_from_args(args: argparse.Namespace) -> LlmConfig:
    config = LlmConfig(
        model=args.llm_model,
        base_url=args.llm_base_url,
        api_key_secret=args.llm_api_key_secret,
        dry_run=args.llm_dry_run,
        json_mode=args.llm_json_mode,
        temperature=args.llm_temperature,
        timeout_s=args.llm_timeout,
        max_retries=args.llm_max_retries,
        concurrency=args.llm_concurrency,
        requests_per_minute=args.llm_requests_per_minute,
        tokens_per_minute=args.llm_tokens_per_minute,
        batch_items=args.llm_batch_items,
        batch_tokens=args.llm_batch_tokens,
    )
    if min(config.concurrency, config.batch_items, config.batch_tokens) < 1 or config.max_retries < 0:
        raise SystemExit("error: --llm-concurrency, --llm-batch-items and --llm-batch-tokens must be >= 1, "
                         "--llm-max-retries >= 0")
    return config


# --- the API key -----------------------------------------------------------------------------


def resolve_api_key(config: LlmConfig, environ: Mapping[str, str] = os.environ) -> str:
    """The key from Secret Manager when a secret is named, else from OPENAI_API_KEY.

    Called where the requests are made (a DoFn's setup), never where options are built.
    """
    if config.api_key_secret:
        return read_secret(config.api_key_secret)
    key = environ.get(API_KEY_ENV, "")
    if not key:
        raise LlmConfigError(
            f"no API key: set {API_KEY_ENV} (any value for a server that needs none) or --llm-api-key-secret"
        )
    return key


def secret_version_name(secret: str) -> str:
    """`projects/P/secrets/S` means its latest version; a full version name is kept."""
    if not re.fullmatch(r"projects/[^/]+/secrets/[^/]+(/versions/[^/]+)?", secret):
        raise LlmConfigError("--llm-api-key-secret must look like projects/PROJECT/secrets/NAME[/versions/V]")
    return secret if "/versions/" in secret else f"{secret}/versions/latest"


def read_secret(secret: str) -> str:
    name = secret_version_name(secret)
    try:
        from google.cloud import secretmanager  # the gcp extra; only workers that need it import it
    except ImportError as error:
        raise LlmConfigError(
            "--llm-api-key-secret needs google-cloud-secret-manager: pip install 'chimed-pipeline[gcp]'"
        ) from error
    try:
        response = secretmanager.SecretManagerServiceClient().access_secret_version(name=name)
    except Exception as error:  # the library's errors vary by transport; the name is not secret
        raise LlmConfigError(f"cannot read secret {name}: {type(error).__name__}") from None
    return response.payload.data.decode("utf-8").strip()


# --- counters ----------------------------------------------------------------------------------


class Counters:
    """Thread-safe named counts; `drain()` hands out what accrued since the last drain, which is
    what a DoFn adds to its Beam counters after each bundle."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, int] = {}
        self._drained: dict[str, int] = {}

    def inc(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._totals[name] = self._totals.get(name, 0) + int(amount)

    def get(self, name: str) -> int:
        with self._lock:
            return self._totals.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._totals.items()))

    def drain(self) -> dict[str, int]:
        with self._lock:
            deltas = {n: v - self._drained.get(n, 0) for n, v in sorted(self._totals.items())}
            self._drained = dict(self._totals)
        return {name: delta for name, delta in deltas.items() if delta}


# --- pure helpers --------------------------------------------------------------------------------

_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: one token per CJK character, one per four other characters.

    Used for batch budgets, rate limits and dry runs; the bill uses the server's `usage`.
    """
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 4)


def messages_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    return sum(estimate_tokens(m["content"]) + 4 for m in messages)  # + role and framing


def pack_batches(texts: Sequence[str], max_items: int, max_tokens: int) -> list[list[int]]:
    """Positions of `texts`, in order, grouped so that no batch exceeds either budget (a text
    over the token budget goes alone)."""
    batches: list[list[int]] = []
    tokens = 0
    for position, text in enumerate(texts):
        cost = estimate_tokens(text) + ITEM_FRAMING_TOKENS
        if not batches or len(batches[-1]) >= max_items or tokens + cost > max_tokens:
            batches.append([])
            tokens = 0
        batches[-1].append(position)
        tokens += cost
    return batches


def schema_problems(value: object, schema: Mapping, path: str = "$") -> list[str]:
    """What `value` breaks in `schema`, for the JSON Schema subset structured outputs use:
    type, properties, required, additionalProperties: false, items, enum."""
    expected = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }
    if expected in checks and not checks[expected](value):
        return [f"{path}: expected {expected}"]
    problems = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: not one of the allowed values")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        missing = [name for name in schema.get("required", []) if name not in value]
        if missing:
            problems.append(f"{path}: missing {', '.join(map(repr, missing[:5]))}")
        if schema.get("additionalProperties") is False:
            extra = [name for name in value if name not in properties]
            if extra:
                problems.append(f"{path}: unexpected {', '.join(map(repr, extra[:5]))}")
        for name, subschema in properties.items():
            if name in value:
                problems.extend(schema_problems(value[name], subschema, f"{path}.{name}"))
    if isinstance(value, list) and "items" in schema:
        for number, element in enumerate(value):
            problems.extend(schema_problems(element, schema["items"], f"{path}[{number}]"))
    return problems


def parse_json_content(content: str | None) -> dict:
    """The JSON object a reply's message holds; tolerates a Markdown code fence around it."""
    text = (content or "").strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1)
    value = json.loads(text)  # ValueError for the caller
    if not isinstance(value, dict):
        raise ValueError("reply is not a JSON object")
    return value


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait a 429/503 asks for: `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        if "retry-after-ms" in lowered:
            return min(max(float(lowered["retry-after-ms"]) / 1000, 0.0), RETRY_AFTER_MAX_S)
        value = lowered.get("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value).timestamp()
            seconds = when - (time.time() if now is None else now)
    except (TypeError, ValueError, OverflowError):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


def backoff_s(attempt: int, config: LlmConfig, rng: random.Random) -> float:
    """Exponential backoff with full jitter (attempt counts from 1)."""
    return rng.uniform(0, min(config.backoff_max_s, config.backoff_s * 2 ** (attempt - 1)))


def redact(text: str, secret: str) -> str:
    """A short, single-line message with the secret (if any) blanked out."""
    if secret:
        text = text.replace(secret, "[redacted]")
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_MAX_CHARS else text[: DETAIL_MAX_CHARS - 1] + "…"


# --- budgets and throttling ---------------------------------------------------------------------


class MinuteBudget:
    """A per-minute allowance refilled continuously, holding at most ten seconds' worth.

    A request may overdraw it (so one large request never waits forever); the next ones wait
    until the balance is positive again.
    """

    def __init__(self, per_minute: float, now: float) -> None:
        self.rate_s = per_minute / 60.0
        self.capacity = max(1.0, per_minute / 6.0)
        self.balance = self.capacity
        self.stamp = now

    def wait_s(self, now: float) -> float:
        self.balance = min(self.capacity, self.balance + (now - self.stamp) * self.rate_s)
        self.stamp = now
        return 0.0 if self.balance > 0 else (1e-3 - self.balance) / self.rate_s

    def spend(self, amount: float) -> None:
        self.balance -= amount


class RateLimiter:
    """Per-worker requests/minute and tokens/minute limits, shared by the worker's threads."""

    def __init__(self, config: LlmConfig, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        now = clock()
        self._requests = MinuteBudget(config.requests_per_minute, now) if config.requests_per_minute > 0 else None
        self._tokens = MinuteBudget(config.tokens_per_minute, now) if config.tokens_per_minute > 0 else None
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

    def acquire(self, tokens: int) -> float:
        """Wait until a request of about `tokens` tokens may go; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                budgets = [b for b in (self._requests, self._tokens) if b is not None]
                wait = max([b.wait_s(now) for b in budgets], default=0.0)
                if wait <= 0:
                    if self._requests is not None:
                        self._requests.spend(1)
                    if self._tokens is not None:
                        self._tokens.spend(tokens)
                    return waited
            self._sleep(wait)
            waited += wait

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token budget once the server has said what a request really used."""
        if self._tokens is not None:
            with self._lock:
                self._tokens.spend(actual - estimated)


class AdaptiveThrottle:
    """Client-side adaptive throttling, the algorithm of Beam's RemoteModelHandler (Google SRE book,
    "Handling Overload"): once recent requests outnumber accepted ones by more than the overload
    ratio K, each new request is held back with probability (requests - K * accepts) / (requests + 1),
    so an overloaded endpoint is not hammered further.

    Unlike Beam's AdaptiveThrottler, a request counts when its answer is known, not when it leaves:
    with many requests in flight, the ones still waiting are not failures.
    """

    WINDOW_MS = 60_000
    BUCKET_MS = 1_000

    def __init__(
        self, config: LlmConfig, clock: Callable[[], float], sleep: Callable[[float], None], rng: random.Random
    ) -> None:
        from apache_beam.io.components.util import MovingSum

        self._requests = MovingSum(self.WINDOW_MS, self.BUCKET_MS)
        self._accepts = MovingSum(self.WINDOW_MS, self.BUCKET_MS)
        self._ratio = config.throttle_overload_ratio
        self._delay_s = config.throttle_delay_s
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Hold the caller while throttled (each hold counts as a request); returns seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock() * 1000
                requests = self._requests.sum(now) if self._requests.has_data(now) else 0
                accepts = self._accepts.sum(now) if self._accepts.has_data(now) else 0
                throttled = self._rng.random() < max(0.0, (requests - self._ratio * accepts) / (requests + 1))
                if throttled:
                    self._requests.add(now, 1)
            if not throttled:
                return waited
            self._sleep(self._delay_s)
            waited += self._delay_s

    def record(self, accepted: bool) -> None:
        """A request's outcome: accepted unless the endpoint was overloaded or failing."""
        with self._lock:
            now = self._clock() * 1000
            self._requests.add(now, 1)
            if accepted:
                self._accepts.add(now, 1)


# --- the client ------------------------------------------------------------------------------------


class _Transient(Exception):
    """A failure worth retrying as is (overload, server error, timeout, garbled body)."""

    def __init__(self, detail: str, wait_s: float | None = None, splittable: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.wait_s = wait_s
        self.splittable = splittable


@dataclasses.dataclass(frozen=True)
class _Reply:
    content: str | None
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None


T = TypeVar("T")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class ItemReply(Generic[T]):
    """One item's part of a keyed reply: its value, or why no request for it succeeded."""

    item: T
    value: object = None
    error: str = ""  # LlmError's detail; "" when `value` came back


class LlmClient:
    """Structured-output chat requests through the `openai` package, with the manners above.

    One instance per worker (build it in `DoFn.setup`); it is thread-safe, and `map_concurrent`
    runs work on its own pool of `config.concurrency` threads.
    """

    def __init__(
        self,
        config: LlmConfig,
        api_key: str,
        *,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        import openai  # imported here so that merely configuring a run never needs it

        self.config = config
        self.counters = counters or Counters()
        self._openai_module = openai
        self._client = openai.OpenAI(
            api_key=api_key,
            base_url=config.base_url or os.environ.get(BASE_URL_ENV) or None,
            timeout=config.timeout_s,
            max_retries=0,  # retries are ours: counted, jittered, honouring Retry-After
        )
        self._secret = api_key
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._limiter = RateLimiter(config, clock, sleep)
        self._throttle = AdaptiveThrottle(config, clock, sleep, random.Random(self._rng.random()))
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: LlmConfig, **kwargs) -> "LlmClient":
        return cls(config, resolve_api_key(config), **kwargs)

    def __repr__(self) -> str:  # never the key
        return f"LlmClient(model={self.config.model!r})"

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._client.close()

    def map_concurrent(self, fn: Callable[[T], R], inputs: Iterable[T]) -> list[R]:
        """`[fn(x) for x in inputs]`, up to `concurrency` at a time, results in input order."""
        inputs = list(inputs)
        if len(inputs) <= 1 or self.config.concurrency <= 1:
            return [fn(x) for x in inputs]
        with self._pool_lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.config.concurrency, thread_name_prefix="llm"
                )
        return list(self._pool.map(fn, inputs))

    def request_batched(
        self,
        items: Sequence[T],
        texts: Sequence[str],
        build: Callable[[dict[str, T]], tuple[list[dict], dict]],
        *,
        name: str = "reply",
    ) -> list[ItemReply[T]]:
        """Ask about many items, several per request: one `ItemReply` per item, in order.

        `texts[i]` is what item i puts into the prompt (it sizes the batches); `build` turns a
        batch keyed "1".."N" into (messages, schema), the schema naming exactly those keys. Batches
        go out concurrently; one that fails in a way fewer items might not (see LlmError) is split
        in halves, down to single items.
        """
        batches = pack_batches(texts, self.config.batch_items, self.config.batch_tokens)
        replies = self.map_concurrent(
            lambda batch: self._request_keyed([items[p] for p in batch], build, name), batches
        )
        return [reply for batch in replies for reply in batch]

    def _request_keyed(self, items: list[T], build, name: str) -> list[ItemReply[T]]:
        keyed = {str(n): item for n, item in enumerate(items, start=1)}
        messages, schema = build(keyed)
        try:
            reply = self.request_json(messages, schema, name=name)
        except LlmError as error:
            if not error.splittable or len(items) == 1:
                return [ItemReply(item, error=error.detail) for item in items]
            self.counters.inc(SPLITS)
            half = len(items) // 2
            return self._request_keyed(items[:half], build, name) + self._request_keyed(items[half:], build, name)
        return [ItemReply(item, value=reply.get(key)) for key, item in keyed.items()]

    def response_format(self, schema: Mapping, name: str) -> dict:
        if self.config.json_mode == JSON_OBJECT_MODE:
            return {"type": "json_object"}
        return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}

    def request_json(self, messages: Sequence[Mapping[str, str]], schema: Mapping, *, name: str = "reply") -> dict:
        """The reply to `messages` as a JSON object valid against `schema`.

        Transient failures (429, 5xx, timeouts, connection errors, non-JSON bodies) are retried up
        to `max_retries` times with backoff (a server's Retry-After wins); a reply that is not JSON
        or breaks the schema is retried `invalid_reply_retries` times. Then `LlmError`.
        401/403/404 raise `LlmConfigError`.
        """
        messages = list(messages)
        if self.config.json_mode == JSON_OBJECT_MODE:  # the server will not see the schema otherwise
            shape = "Reply with one JSON object valid against this JSON Schema: " + json.dumps(schema)
            messages = [*messages, {"role": "system", "content": shape}]
        response_format = self.response_format(schema, name)
        estimated = messages_tokens(messages) * 2  # the reply is budgeted like the prompt
        transient_failures = 0
        invalid_replies = 0
        while True:
            waited = self._throttle.wait() + self._limiter.acquire(estimated)
            if waited:
                self.counters.inc(THROTTLED_MS, round(waited * 1000))
            self.counters.inc(REQUESTS)
            try:
                reply = self._send(messages, response_format)
            except _Transient as failure:
                self._throttle.record(accepted=False)
                transient_failures += 1
                if transient_failures > self.config.max_retries:
                    self.counters.inc(FAILED_REQUESTS)
                    detail = f"{failure.detail} (after {transient_failures} attempts)"
                    raise LlmError(detail, splittable=failure.splittable) from None
                self.counters.inc(RETRIES)
                with self._rng_lock:
                    delay = failure.wait_s if failure.wait_s is not None else backoff_s(
                        transient_failures, self.config, self._rng
                    )
                LOG.debug("LLM request failed (%s); retrying in %.2fs", failure.detail, delay)
                self._sleep(delay)
                continue
            self._throttle.record(accepted=True)
            self._account(reply, estimated)
            problem = self._reply_problem(reply, schema)
            if problem is None:
                return parse_json_content(reply.content)
            self.counters.inc(INVALID_REPLIES)
            if reply.finish_reason == "length" or invalid_replies >= self.config.invalid_reply_retries:
                self.counters.inc(FAILED_REQUESTS)
                raise LlmError(problem, splittable=True)  # the same request would only fail again
            invalid_replies += 1
            self.counters.inc(RETRIES)

    def _account(self, reply: _Reply, estimated: int) -> None:
        prompt = reply.prompt_tokens if reply.prompt_tokens is not None else estimated // 2
        completion = (
            reply.completion_tokens
            if reply.completion_tokens is not None
            else estimate_tokens(reply.content or "")
        )
        self.counters.inc(PROMPT_TOKENS, prompt)
        self.counters.inc(COMPLETION_TOKENS, completion)
        self._limiter.settle(estimated, prompt + completion)

    @staticmethod
    def _reply_problem(reply: _Reply, schema: Mapping) -> str | None:
        if reply.finish_reason == "length":
            return "reply truncated (finish_reason=length)"
        try:
            value = parse_json_content(reply.content)
        except ValueError:
            return "reply is not a JSON object"
        problems = schema_problems(value, schema)
        return f"reply breaks the schema: {'; '.join(problems[:3])}" if problems else None

    def _send(self, messages: list, response_format: dict) -> _Reply:
        """One HTTP attempt. Raises _Transient, LlmError or LlmConfigError; never leaks the key."""
        openai = self._openai_module
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=self.config.model,
                messages=messages,
                response_format=response_format,
                temperature=self.config.temperature,
            )
        except openai.APITimeoutError:
            raise _Transient(f"timed out after {self.config.timeout_s:g}s", splittable=True) from None
        except openai.APIConnectionError as error:
            raise _Transient(redact(f"connection error: {error}", self._secret)) from None
        except openai.APIStatusError as error:
            status = error.status_code
            message = redact(f"HTTP {status}: {error.message}", self._secret)
            if status in (401, 403, 404):
                raise LlmConfigError(f"{message} (check --llm-model, --llm-base-url and the API key)") from None
            if status in (408, 409, 429) or status >= 500:
                raise _Transient(message, retry_after_s(error.response.headers)) from None
            raise LlmError(message, splittable=True) from None  # 400/413/422: maybe too large a batch
        try:
            body = json.loads(raw.http_response.text)
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            return _Reply(
                content=choice["message"].get("content"),
                finish_reason=choice.get("finish_reason") or "",
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _Transient("response body is not a chat completion (non-JSON or malformed)") from None
