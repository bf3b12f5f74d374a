"""Instruction stage: stage-1 alignment turns and stage-2 QA (both in LLaVA form), and the modality.

Stage 1: the instruction is one of several Chinese "describe the image" phrasings, picked from the
record's key by hash: deterministic, and spread evenly so a model does not learn a single prompt.

Stage 2 (`--qa`): a record that came with QA (LLaVA / LLaVA-Med / ChiMed-VL conversations,
PMC-CaseReport rows; English ones were translated in the translate stage) keeps it, in Simplified
Chinese; any other gets QA from the offline template generator (`template`) or an LLM (`llm`), or
none (`none`). A record whose ingested QA has no answered question, or whose LLM generation fails,
is rejected `qa_failed`; a caption the templates find nothing to ask about keeps its record (it still
serves stage 1) with no stage-2 turns.

LLM-written QA is cached in the translation memory like translations, so a rerun pays nothing
twice: a TM row of kind `qa` whose `source` is what the generator saw (the canonical JSON of the
caption, Chinese caption and mentions) and whose `target` is the JSON list of [question, answer].
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

from typing import TYPE_CHECKING

import apache_beam as beam

from schemas import IndexRow, Reason, Record, Stage, TmKind, TmRow, tm_lookup_key
from schemas.records import GPT, HUMAN, IMAGE_TOKEN, TURN_VALUE, turn
from transforms.base import FACTS, RECORDS, ROWS, RecordFn, StageResult, apply_stage, publish
from transforms.qa_pairs import QaPair, conversation_pairs, llava_conversation
from transforms.qa_template import detect_modality, template_qa
from transforms.text import to_simplified

if TYPE_CHECKING:
    from chimed_pipeline.llm import LlmConfig

QA_LLM = "llm"
QA_TEMPLATE = "template"
QA_NONE = "none"
QA_MODES = (QA_LLM, QA_TEMPLATE, QA_NONE)

ALIGNMENT_INSTRUCTIONS = (
    "请描述这张图片。",
    "请简要描述这幅医学图像的内容。",
    "这张图展示了什么？",
    "请说明这张医学图像所显示的内容。",
    "请为这张图片写一段简短的说明。",
    "图中可以看到什么？请加以描述。",
    "请概括这幅图像的主要内容。",
    "请解读这张医学影像。",
    "请用一段话描述这张图。",
    "这幅图描绘了什么内容？",
    "请给出这张图片的图注。",
    "请详细说明图中所示。",
)


def pick_instruction(key: str) -> str:
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return ALIGNMENT_INSTRUCTIONS[int.from_bytes(digest[:4], "big") % len(ALIGNMENT_INSTRUCTIONS)]


def alignment_turns(record: Record) -> list:
    if not record.caption_zh:
        return []
    return [turn(HUMAN, f"{IMAGE_TOKEN}\n{pick_instruction(record.key)}"), turn(GPT, record.caption_zh)]


def llm_requested(llm: "LlmConfig | None") -> bool:
    """--llm-model given, or --llm-dry-run (which estimates the cost and calls nothing)."""
    return bool(llm and (llm.model or llm.dry_run))


def default_qa_mode(llm: "LlmConfig | None") -> str:
    return QA_LLM if llm_requested(llm) else QA_TEMPLATE


def prepare_instructions(record: Record) -> Record:
    """Stage-1 turns, the detected modality, and ingested QA normalized (Simplified, `<image>` once)."""
    conversation_text = " ".join(t[TURN_VALUE] for t in record.conversations)
    modality = detect_modality(record.caption_en, record.caption_zh or conversation_text)
    pairs = [dataclasses.replace(p, question=to_simplified(p.question), answer=to_simplified(p.answer))
             for p in conversation_pairs(record.conversations)]
    return dataclasses.replace(
        record, alignment=alignment_turns(record), modality=modality, conversations=llava_conversation(pairs)
    )


def qa_failed(record: Record, detail: str) -> IndexRow:
    return IndexRow.rejected(record, Stage.INSTRUCT, Reason.QA_FAILED, detail)


def prepare_or_reject(record: Record) -> Record | IndexRow:
    """`prepare_instructions`, rejecting a record whose ingested QA has no answered question."""
    had_qa = bool(record.conversations)
    prepared = prepare_instructions(record)
    if had_qa and not prepared.conversations:
        return qa_failed(prepared, "its conversation has no answered question")
    return prepared


def with_template_qa(record: Record, mode: str) -> Record | IndexRow:
    """The record with its stage-2 turns, for the `template` and `none` modes."""
    record = prepare_or_reject(record)
    if isinstance(record, IndexRow) or record.conversations or mode == QA_NONE:
        return record
    pairs = template_qa(record.id, record.caption_en, record.caption_zh)
    return dataclasses.replace(record, conversations=llava_conversation(pairs))


class BuildInstructionsFn(RecordFn):
    stage_name = "instruct"

    def __init__(self, qa_mode: str = QA_TEMPLATE) -> None:
        super().__init__()
        self.qa_mode = qa_mode

    def handle(self, record: Record):
        yield with_template_qa(record, self.qa_mode)


DRY_RUN_DETAIL = "--llm-dry-run: estimated, not generated"
DRY_RUN_PREFIX = "qa.dry_run_"  # + items, requests, prompt_tokens, completion_tokens
QA_TGT_LANG = "zh"
NEEDS_QA = "needs_qa"
MISSES = "misses"
TM_ROWS = "tm_rows"
RECORD = "record"
TM = "tm"


def qa_tm_source(record: Record) -> str:
    """The TM `source` of LLM-written QA: exactly what the generator sees, as canonical JSON."""
    from transforms.qa_llm import qa_source

    return json.dumps(qa_source(record).prompt_item(), ensure_ascii=False, sort_keys=True)


def qa_tm_row(record: Record, pairs, model: str) -> TmRow:
    from transforms.qa_llm import PROMPT_VERSION

    target = json.dumps([[p.question, p.answer] for p in pairs], ensure_ascii=False)
    return TmRow(qa_tm_source(record), target, kind=TmKind.QA.value, model=model, prompt_version=PROMPT_VERSION)


def pairs_from_tm(row: TmRow) -> list[QaPair]:
    """The QA pairs a cached row holds; [] when it holds none (e.g. a translated QA turn)."""
    try:
        items = json.loads(row.target)
    except json.JSONDecodeError:
        return []
    if not isinstance(items, list) or not all(
        isinstance(i, list) and len(i) == 2 and all(isinstance(t, str) and t for t in i) for i in items
    ):
        return []
    return [QaPair(question, answer) for question, answer in items]


class PrepareForLlmQaFn(beam.DoFn):
    """Records keeping their ingested QA go on; the others, keyed by their QA cache key, need QA."""

    def process(self, record: Record):
        prepared = prepare_or_reject(record)
        if isinstance(prepared, IndexRow):
            yield beam.pvalue.TaggedOutput(ROWS, prepared)
        elif prepared.conversations:
            yield prepared
        else:
            key = tm_lookup_key(qa_tm_source(prepared), QA_TGT_LANG, TmKind.QA.value)
            yield beam.pvalue.TaggedOutput(NEEDS_QA, (key, prepared))


class ResolveQaFromTmFn(beam.DoFn):
    """One QA cache key: its records get the cached QA, or go on to the generator."""

    def process(self, element):
        _, grouped = element
        records = sorted(grouped[RECORD], key=lambda r: r.id)
        cached = next((row for _, row in sorted(grouped[TM], key=lambda ranked: ranked[0]) if pairs_from_tm(row)), None)
        if not records:
            return
        if cached is None:
            yield from publish({"qa.tm_misses": len(records)})
            for record in records:
                yield beam.pvalue.TaggedOutput(MISSES, record)
            return
        yield from publish({"qa.tm_hits": len(records)})
        yield beam.pvalue.TaggedOutput(TM_ROWS, cached)
        conversation = llava_conversation(pairs_from_tm(cached))
        for record in records:
            yield dataclasses.replace(record, conversations=conversation)


class GenerateQaFn(beam.DoFn):
    """Batches of prepared records needing QA -> records with LLM-written QA (and its TM row), or
    `qa_failed` rows. One client per worker; with --llm-dry-run none: the estimated requests and
    tokens are published instead."""

    def __init__(self, llm: "LlmConfig") -> None:
        super().__init__()
        self.llm = llm

    def setup(self) -> None:
        from chimed_pipeline.llm import Counters, LlmClient
        from transforms.qa_llm import QaGenerator

        self._counters = Counters()
        self._client = None if self.llm.dry_run else LlmClient.from_config(self.llm, counters=self._counters)
        self._generator = QaGenerator(self._client, self.llm) if self._client else None

    def process(self, records: list):
        from transforms.qa_llm import QaResult, estimate_cost, qa_source

        sources = [qa_source(record) for record in records]
        if self._generator is None:
            for name, value in dataclasses.asdict(estimate_cost(sources, self.llm)).items():
                self._counters.inc(f"{DRY_RUN_PREFIX}{name}", value)
            results = {s.item_id: QaResult(s.item_id, detail=DRY_RUN_DETAIL) for s in sources}
        else:
            results = {r.item_id: r for r in self._generator.generate(sources)}
        yield from publish(self._counters.drain())
        for record in records:
            result = results[record.id]
            if result.ok:
                yield beam.pvalue.TaggedOutput(TM_ROWS, qa_tm_row(record, result.pairs, self.llm.model))
                yield dataclasses.replace(record, conversations=llava_conversation(list(result.pairs)))
            else:
                yield beam.pvalue.TaggedOutput(ROWS, qa_failed(record, result.detail))

    def teardown(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()


class BuildInstructions(beam.PTransform):
    """The instruct stage for any `--qa` mode. `memory`: the TM rows keyed by lookup key (as
    `ReadTranslationMemory` gives them), where `llm` mode finds QA it wrote before."""

    def __init__(self, qa_mode: str, llm: "LlmConfig | None" = None, memory: beam.PCollection | None = None) -> None:
        super().__init__()
        if qa_mode == QA_LLM and not llm_requested(llm):
            raise ValueError("--qa llm needs --llm-model (or --llm-dry-run)")
        self.qa_mode = qa_mode
        self.llm = llm
        self.memory = memory

    def expand(self, records) -> StageResult:
        if self.qa_mode != QA_LLM:
            return apply_stage(records, "Build", BuildInstructionsFn(self.qa_mode))
        prepared = records | "Prepare" >> beam.ParDo(PrepareForLlmQaFn()).with_outputs(ROWS, NEEDS_QA, main=RECORDS)
        memory = self.memory if self.memory is not None else records.pipeline | "NoTm" >> beam.Create([])
        cached = (
            {RECORD: prepared[NEEDS_QA], TM: memory}
            | "JoinQaTm" >> beam.CoGroupByKey()
            | "ResolveQaTm" >> beam.ParDo(ResolveQaFromTmFn()).with_outputs(MISSES, TM_ROWS, FACTS, main=RECORDS)
        )
        generated = (
            cached[MISSES]
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.llm.batch_items * self.llm.concurrency)
            | "Generate" >> beam.ParDo(GenerateQaFn(self.llm)).with_outputs(ROWS, TM_ROWS, FACTS, main=RECORDS)
        )
        return StageResult(
            records=(prepared[RECORDS], cached[RECORDS], generated[RECORDS]) | "QaRecords" >> beam.Flatten(),
            rows=(prepared[ROWS], generated[ROWS]) | "QaRows" >> beam.Flatten(),
            facts=(cached[FACTS], generated[FACTS]) | "QaFacts" >> beam.Flatten(),
            tm_rows=(cached[TM_ROWS], generated[TM_ROWS]) | "QaTmRows" >> beam.Flatten(),
        )
