"""Translation stage: every English text (caption, inline mentions) gets its Chinese from the TM first.

Texts are grouped by TM lookup key, so identical texts across records are resolved once. A hit
takes the highest-precedence TM row; a miss goes to `translate_misses` (the LLM when `--llm-model`
is given; otherwise it stays untranslated). Results are joined back to their records by id: a
record whose caption has no translation is rejected with the reason; an untranslated inline mention
is left out of `inline_mentions_zh` (the mentions are context, not the sample).
"""
from __future__ import annotations

import dataclasses

import apache_beam as beam

from chimed_pipeline.llm import Counters, LlmConfig
from schemas import IndexRow, Reason, Record, Stage, TmKind, TmRow, tm_lookup_key
from schemas.records import IMAGE_TOKEN, TURN_FROM, TURN_VALUE, turn
from transforms.base import FACTS, RECORDS, ROWS, StageResult, counter, publish
from transforms.glossary import load_glossary
from transforms.text import detect_language
from transforms.translation import TranslationItem, TranslationResult, Translator, estimate_cost

CAPTION_SLOT = "caption"
MENTION_SLOT = "mention:"
QA_SLOT = "qa:"  # + turn index: an ingested English conversation is translated turn by turn
TGT_LANG = "zh"
MISSES = "misses"
USED_TM = "used_tm"
REQUESTS = "requests"
TM = "tm"
RECORD = "record"
RESULTS = "results"


@dataclasses.dataclass(frozen=True)
class TextRequest:
    record_id: str
    slot: str  # CAPTION_SLOT or MENTION_SLOT + index
    text: str
    kind: str  # TmKind value


@dataclasses.dataclass(frozen=True)
class SlotResult:
    slot: str
    target: str = ""
    reason: Reason | None = None
    detail: str = ""


def text_requests(record: Record) -> list[TextRequest]:
    requests = []
    if record.caption_en and not record.caption_zh:
        requests.append(TextRequest(record.id, CAPTION_SLOT, record.caption_en, TmKind.CAPTION.value))
    for number, mention in enumerate(record.inline_mentions_en):
        requests.append(TextRequest(record.id, f"{MENTION_SLOT}{number}", mention, TmKind.MENTION.value))
    for number, text in enumerate(english_turns(record)):
        if text:  # an empty turn carries no QA; the instruct stage leaves it out
            requests.append(TextRequest(record.id, f"{QA_SLOT}{number}", text, TmKind.QA.value))
    return requests


def english_turns(record: Record) -> list[str]:
    """The turn texts (without `<image>`) of an English conversation; [] when it is Chinese or absent."""
    texts = [" ".join(t[TURN_VALUE].replace(IMAGE_TOKEN, " ").split()) for t in record.conversations]
    return texts if texts and detect_language(" ".join(texts)) == "en" else []


def apply_results(record: Record, results: list[SlotResult]) -> Record | IndexRow:
    """The record with its translations filled in, or a rejected row when its caption has none."""
    by_slot = {result.slot: result for result in results}
    caption = by_slot.get(CAPTION_SLOT)
    if caption is not None and not caption.target:
        return IndexRow.rejected(record, Stage.TRANSLATE, caption.reason or Reason.UNTRANSLATED, caption.detail)
    turn_results = [by_slot.get(f"{QA_SLOT}{n}") for n in range(len(record.conversations))]
    untranslated = next((r for r in turn_results if r is not None and not r.target), None)
    if untranslated is not None:  # the QA came with the record: it is translated whole or not kept
        detail = f"QA turn {untranslated.slot[len(QA_SLOT):]}: {untranslated.detail}"
        return IndexRow.rejected(record, Stage.TRANSLATE, untranslated.reason or Reason.UNTRANSLATED, detail)
    conversations = [
        turn(t[TURN_FROM], r.target) if r is not None else t for t, r in zip(record.conversations, turn_results)
    ]
    mentions_zh = [
        by_slot[slot].target
        for slot in (f"{MENTION_SLOT}{n}" for n in range(len(record.inline_mentions_en)))
        if slot in by_slot and by_slot[slot].target
    ]
    return dataclasses.replace(
        record,
        caption_zh=caption.target if caption is not None else record.caption_zh,
        inline_mentions_zh=mentions_zh or record.inline_mentions_zh,
        conversations=conversations,
    )


class ResolveFromTmFn(beam.DoFn):
    """One lookup key: its requests and TM rows -> results for hits, the key's requests for misses."""

    def process(self, element):
        _, grouped = element
        requests = sorted(grouped[REQUESTS], key=lambda r: (r.record_id, r.slot))
        if not requests:
            return
        candidates = sorted(grouped[TM], key=lambda ranked: ranked[0])
        if not candidates:
            yield from publish({"translate.tm_misses": 1})
            yield beam.pvalue.TaggedOutput(MISSES, requests)
            return
        row = candidates[0][1]
        yield from publish({"translate.tm_hits": len(requests)})
        yield beam.pvalue.TaggedOutput(USED_TM, row)
        for request in requests:
            yield request.record_id, SlotResult(request.slot, target=row.target)


def leave_untranslated(requests: list[TextRequest]):
    """What a miss becomes without an LLM: the text stays untranslated."""
    for request in requests:
        detail = "no translation in the TM and no --llm-model given"
        yield request.record_id, SlotResult(request.slot, reason=Reason.UNTRANSLATED, detail=detail)


class ApplyTranslationsFn(beam.DoFn):
    def __init__(self) -> None:
        super().__init__()
        self.rejected = counter("translate.rejected")

    def process(self, element):
        _, grouped = element
        for record in grouped[RECORD]:  # exactly one record per id
            result = apply_results(record, list(grouped[RESULTS]))
            if isinstance(result, IndexRow):
                self.rejected.inc()
                yield beam.pvalue.TaggedOutput(ROWS, result)
            else:
                yield result


class Translate(beam.PTransform):
    def __init__(self, tm: beam.PCollection, translate_misses: beam.PTransform | None = None) -> None:
        super().__init__()
        self.tm = tm
        self.translate_misses = translate_misses

    def expand(self, records) -> StageResult:
        requests = records | "Requests" >> beam.FlatMap(
            lambda record: [(tm_lookup_key(r.text, TGT_LANG, r.kind), r) for r in text_requests(record)]
        )
        resolved = (
            {REQUESTS: requests, TM: self.tm}
            | "JoinTm" >> beam.CoGroupByKey()
            | "ResolveTm" >> beam.ParDo(ResolveFromTmFn()).with_outputs(MISSES, USED_TM, FACTS, main="hits")
        )
        if self.translate_misses is None:
            from_misses = resolved[MISSES] | "Untranslated" >> beam.FlatMap(leave_untranslated)
            new_tm_rows, llm_facts = [], []
        else:
            translated = resolved[MISSES] | "Llm" >> self.translate_misses
            from_misses, new_tm_rows, llm_facts = translated.results, [translated.tm_rows], [translated.facts]
        results = (resolved.hits, from_misses) | "AllResults" >> beam.Flatten()
        applied = (
            {RECORD: records | "ById" >> beam.Map(lambda r: (r.id, r)), RESULTS: results}
            | "JoinRecords" >> beam.CoGroupByKey()
            | "Apply" >> beam.ParDo(ApplyTranslationsFn()).with_outputs(ROWS, main=RECORDS)
        )
        tm_rows = (resolved[USED_TM], *new_tm_rows) | "TmRows" >> beam.Flatten()
        facts = (resolved[FACTS], *llm_facts) | "Facts" >> beam.Flatten()
        return StageResult(records=applied[RECORDS], rows=applied[ROWS], facts=facts, tm_rows=tm_rows)


# --- TM misses through the LLM (--llm-model), or estimated (--llm-dry-run) --------------------

NEW_TM = "new_tm"
BATCHES_PER_CALL = 2  # each DoFn call fills the request pool this many times over
DRY_RUN_DETAIL = "--llm-dry-run: estimated, not translated"
DRY_RUN_PREFIX = "translate.dry_run_"  # + items, requests, prompt_tokens, completion_tokens


class TranslateMissesFn(beam.DoFn):
    """A batch of misses (each: the requests sharing one lookup key) -> a SlotResult for every
    request, plus a TmRow (tagged NEW_TM) for every new translation. With --llm-dry-run it only
    adds the estimated requests and tokens to the counters."""

    def __init__(self, llm: LlmConfig) -> None:
        super().__init__()
        self.llm = llm

    def setup(self) -> None:
        from chimed_pipeline.llm import LlmClient

        self.counters = Counters()
        self.client = None if self.llm.dry_run else LlmClient.from_config(self.llm, counters=self.counters)
        self.glossary = load_glossary()

    def process(self, misses: list[list[TextRequest]]):
        items = [TranslationItem(str(n), group[0].text, TmKind(group[0].kind)) for n, group in enumerate(misses)]
        if self.client is None:
            estimate = estimate_cost([item.text for item in items], self.llm, self.glossary)
            for name, value in dataclasses.asdict(estimate).items():
                self.counters.inc(f"{DRY_RUN_PREFIX}{name}", value)
            results = [TranslationResult(i.item_id, reason=Reason.UNTRANSLATED, detail=DRY_RUN_DETAIL) for i in items]
        else:
            results = Translator(self.client, self.llm, self.glossary).translate(items)
        for group, result in zip(misses, results):
            if result.tm_row is not None:
                yield beam.pvalue.TaggedOutput(NEW_TM, result.tm_row)
            for request in group:
                yield request.record_id, SlotResult(request.slot, result.target, result.reason, result.detail)
        yield from publish(self.counters.drain())

    def teardown(self) -> None:
        if self.client is not None:
            self.client.close()


@dataclasses.dataclass
class MissTranslations:
    results: beam.PCollection  # (record id, SlotResult) for every request of every miss
    tm_rows: beam.PCollection  # TmRow for every new translation
    facts: beam.PCollection  # (name, count): requests, tokens, retries


class TranslateMisses(beam.PTransform):
    """TM misses through the LLM, in batches large enough to fill every concurrent request."""

    def __init__(self, llm: LlmConfig) -> None:
        super().__init__()
        self.llm = llm

    def expand(self, misses) -> MissTranslations:
        size = self.llm.batch_items * self.llm.concurrency * BATCHES_PER_CALL
        translated = (
            misses
            | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
            | "Translate" >> beam.ParDo(TranslateMissesFn(self.llm)).with_outputs(NEW_TM, FACTS, main=RESULTS)
        )
        return MissTranslations(results=translated[RESULTS], tm_rows=translated[NEW_TM], facts=translated[FACTS])


def translate_misses(llm: LlmConfig) -> TranslateMisses | None:
    """The LLM step for `Translate`: None (misses stay untranslated) unless --llm-model or --llm-dry-run."""
    return TranslateMisses(llm) if llm.model or llm.dry_run else None
