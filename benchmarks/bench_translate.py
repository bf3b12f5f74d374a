"""Translation cost: 1,000 distinct figure captions against the local OpenAI-compatible fake server.

Prints, for the batched translator against a one-caption-per-request baseline run in the same
process: translation requests per caption (target <= 1/16), prompt tokens per caption that are
not caption text (system prompt, glossary lines, JSON framing), completion tokens per caption;
then the same batched run with faults injected; then a second run that first looks every caption
up in the first run's TM (target: zero requests). Token counts are the fake server's `usage`
(one token per Chinese character, word, digit run or symbol), so the ratios are what matters.

    .venv/bin/python benchmarks/bench_translate.py [--captions 1000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fakellm  # noqa: E402
from chimed_pipeline.llm import RETRIES, LlmClient  # noqa: E402
from schemas import TmKind, tm_lookup_key  # noqa: E402
from transforms.glossary import load_glossary  # noqa: E402
from transforms.translation import (  # noqa: E402
    TGT_LANG,
    TranslationItem,
    Translator,
    estimate_cost,
    glossary_consistency,
)

FAULTS = (
    fakellm.RATE_LIMIT, fakellm.SERVER_ERROR, fakellm.HTML_BODY, fakellm.MISSING_ID,
    fakellm.MERGED_IDS, fakellm.NOT_JSON_CONTENT, fakellm.SLOW, fakellm.TRUNCATED,
)


def translate(captions: list[str], faults: tuple = (), **config) -> dict:
    """Translate `captions` on a fresh fake server; what it cost, as the server billed it."""
    with fakellm.FakeLlm(slow_s=3.0) as fake:
        settings = fakellm.fast_config(fake, timeout_s=2.0, **config)
        translator = Translator(LlmClient(settings, fakellm.TEST_KEY), settings)
        items = [TranslationItem(str(n), text, TmKind.CAPTION) for n, text in enumerate(captions)]
        fake.inject(*faults)
        started = time.perf_counter()
        results = translator.translate(items)
        seconds = time.perf_counter() - started
        totals = fake.totals()
    caption_tokens = sum(fakellm.count_tokens(text) for text in captions)
    return {
        "captions": len(captions),
        "translated": sum(1 for r in results if r.tm_row is not None),
        "requests": totals["requests"],
        "overhead_prompt_tokens": totals["prompt_tokens"] - caption_tokens if captions else 0,
        "completion_tokens": totals["completion_tokens"],
        "retries": translator.counters.get(RETRIES),
        "seconds": seconds,
        "glossary_consistency": glossary_consistency(translator.counters),
        "tm_rows": [r.tm_row for r in results if r.tm_row is not None],
        "config": settings,
    }


def per_caption(run: dict, key: str, count: int) -> float:
    return run[key] / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=1000)
    count = parser.parse_args().captions
    captions = fakellm.figure_captions(count)

    baseline = translate(captions, batch_items=1)
    batched = translate(captions)
    faulty = translate(captions, faults=FAULTS)
    estimate = estimate_cost(captions, batched["config"], load_glossary())

    memory = {row.lookup_key: row for row in batched["tm_rows"]}
    misses = [text for text in captions if tm_lookup_key(text, TGT_LANG, TmKind.CAPTION.value) not in memory]
    rerun = translate(misses)

    print(f"{count} distinct captions; batched: {batched['config'].batch_items} items / "
          f"{batched['config'].batch_tokens} tokens a request, concurrency {batched['config'].concurrency}")
    print(f"{'run':<28}{'req/caption':>12}{'overhead prompt tok/caption':>29}{'completion tok/caption':>24}"
          f"{'retries':>9}{'translated':>12}{'seconds':>9}")
    for name, run in (("baseline (1 caption/request)", baseline), ("batched", batched),
                      ("batched, 8 faults injected", faulty), ("rerun with the first TM", rerun)):
        print(f"{name:<28}{per_caption(run, 'requests', count):>12.4f}"
              f"{per_caption(run, 'overhead_prompt_tokens', count):>29.1f}"
              f"{per_caption(run, 'completion_tokens', count):>24.1f}{run['retries']:>9}{run['translated']:>12}"
              f"{run['seconds']:>9.2f}")
    print(f"requests: batched / baseline = {batched['requests'] / baseline['requests']:.4f} "
          f"(1/{baseline['requests'] / max(batched['requests'], 1):.1f}; target <= 1/16)")
    print(f"overhead prompt tokens: batched / baseline = "
          f"{batched['overhead_prompt_tokens'] / baseline['overhead_prompt_tokens']:.3f}")
    billed = batched["overhead_prompt_tokens"] + sum(map(fakellm.count_tokens, captions))
    print(f"dry-run estimate: {estimate.requests} requests (actual {batched['requests']}), "
          f"{estimate.prompt_tokens} prompt tokens (the fake server billed {billed})")
    print(f"rerun with the first run's TM: {len(captions) - len(misses)} TM hits, {rerun['requests']} requests")
    print(f"glossary consistency (batched): {batched['glossary_consistency']:.3f}")
    return 0 if rerun["requests"] == 0 and batched["translated"] == count else 1


if __name__ == "__main__":
    sys.exit(main())
