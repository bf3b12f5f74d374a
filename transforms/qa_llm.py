"""Stage-2 QA through an LLM: prompt, reply schema, batches, and the checks every turn must pass.

LLaVA-Med's recipe: a text-only model sees a figure's caption and the sentences citing it (never
the image) and writes a short Chinese conversation as if both sides could see the figure. Items go
in batches, one JSON object keyed by position; the `json_schema` response format names exactly
those keys, each holding 2–5 question/answer objects, so a reply cannot drop, merge or invent
items. A request that still fails is split in halves down to single items (the client retries
transient failures itself).

Every turn is then checked against the source text; a turn is dropped when it
- cites its source ("根据图注/标题/上下文/描述", "the caption"): the reader sees an image, not a caption,
- refuses or says the text does not tell ("无法确定", "未提及"),
- gives medical advice ("建议就医", "请咨询医生"),
- holds a number, a Latin-script term (HER2, CD20) or a lexicon concept (modality, view, MRI
  sequence, stain: 磁共振, 矢状位, HE染色, written in either language) that the caption and mentions
  do not contain.
An item left with no valid turn gets one more request whose prompt names what went wrong; if that
fails too, the record is rejected `qa_failed` with the reasons as detail.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
import unicodedata
from collections import Counter
from typing import Sequence

from chimed_pipeline.llm import Counters, LlmConfig, LlmError, messages_tokens
from schemas import Record
from transforms.qa_pairs import QaPair
from transforms.qa_template import MODALITY, SEQUENCE, STAIN, VIEW, concepts, find_terms, fold_en
from transforms.translation import CostEstimate, pack_batches

PROMPT_VERSION = "qa-zh-1"  # bump whenever the prompt or the checks change
SCHEMA_NAME = "qa"
MIN_PAIRS = 2
MAX_PAIRS = 5
MAX_MENTIONS = 3  # inline mentions sent per figure, each cut to ...
MAX_MENTION_CHARS = 600
DETAIL_MAX_CHARS = 200
ATTEMPTS = 2  # an item whose turns all fail the checks gets one more request naming the problems
COMPLETION_TOKENS_PER_ITEM = 300  # five pairs of ~20-token questions and answers, in JSON
QUESTION = "question"
ANSWER = "answer"
# Anatomy and findings are left out: "chest X-ray showing cardiomyopathy" rightly answers 心脏.
CHECKED_CONCEPTS = (MODALITY, VIEW, SEQUENCE, STAIN)

# Counters (published as Beam counters by the DoFn).
ITEMS = "qa.llm_items"
GENERATED = "qa.llm_generated"
FAILED = "qa.llm_failed"
TURNS_DROPPED = "qa.llm_turns_dropped"
CHECK_RETRIES = "qa.llm_check_retries"
BISECTIONS = "qa.llm_bisections"

SYSTEM_PROMPT = f"""\
你是一名医学影像与病理学专家，为医学多模态模型编写图像问答训练数据。
用户消息是一个JSON对象，每个键对应一幅医学图（你看不到图，只能看到它的图注 caption、可能有的中文图注 \
caption_zh，以及正文中引用该图的句子 mentions）。请为每个键写{MIN_PAIRS}到{MAX_PAIRS}组简体中文问答，\
就像提问者和回答者都能看到这幅图一样。
规则：
- 只使用图注和引用句中明确写出的事实；不要推测、不要补充文本中没有的数字、术语、部位或诊断。
- 问题类型要多样：成像方式或图的类型、解剖部位、方位或序列、染色方法、主要发现、对比、临床意义（仅限文本明确说明的）。
- 不要提到图注、标题、上下文、描述或文本本身（禁止“根据图注”“根据描述”“上下文中”等说法）；直接描述图像。
- 不要拒绝回答，不要说“无法确定”“未提及”；文本回答不了的问题就不要问。
- 不要给出医疗建议（如“建议就医”“请咨询医生”）。
- 保留原文中的数字、单位和缩写（如 CT、MRI、H&E、HER2）原样。
- 问题和答案都简洁，答案一般一到两句话。
回复一个JSON对象，键与输入完全相同，每个键的值是问答对象数组：[{{"{QUESTION}": "...", "{ANSWER}": "..."}}]。"""


@dataclasses.dataclass(frozen=True)
class QaSource:
    """What the LLM sees of one figure (never the image)."""

    item_id: str
    caption: str  # the English caption, or the Chinese one when there is no English
    caption_zh: str = ""
    mentions: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """Everything an answer may draw on, for the grounding checks."""
        return "\n".join([self.caption, self.caption_zh, *self.mentions])

    def prompt_item(self) -> dict:
        item = {"caption": self.caption}
        if self.caption_zh and self.caption_zh != self.caption:
            item["caption_zh"] = self.caption_zh
        mentions = [m[:MAX_MENTION_CHARS] for m in self.mentions[:MAX_MENTIONS]]
        if mentions:
            item["mentions"] = mentions
        return item


def qa_source(record: Record) -> QaSource:
    """A record's caption (English first: it is the original) and its inline mentions."""
    return QaSource(
        item_id=record.id,
        caption=record.caption_en or record.caption_zh,
        caption_zh=record.caption_zh,
        mentions=tuple(record.inline_mentions_en or record.inline_mentions_zh),
    )


@dataclasses.dataclass(frozen=True)
class QaResult:
    item_id: str
    pairs: tuple[QaPair, ...] = ()
    detail: str = ""  # why turns were dropped, or why none is left (then `pairs` is empty)

    @property
    def ok(self) -> bool:
        return bool(self.pairs)


# --- prompt and schema --------------------------------------------------------------------------


def pair_schema() -> dict:
    return {
        "type": "object",
        "properties": {QUESTION: {"type": "string"}, ANSWER: {"type": "string"}},
        "required": [QUESTION, ANSWER],
        "additionalProperties": False,
    }


def reply_schema(keys: Sequence[str]) -> dict:
    """Exactly these keys, each an array of 2–5 question/answer objects."""
    pairs = {"type": "array", "items": pair_schema(), "minItems": MIN_PAIRS, "maxItems": MAX_PAIRS}
    return {
        "type": "object",
        "properties": {key: pairs for key in keys},
        "required": list(keys),
        "additionalProperties": False,
    }


def build_messages(items: dict[str, QaSource], corrections: dict[str, str]) -> list[dict]:
    system = SYSTEM_PROMPT
    if corrections:
        lines = [f'"{key}": {problem}' for key, problem in corrections.items()]
        system += "\n\n上一次为这些键写的问答全部不合格，请避免这些问题：\n" + "\n".join(lines)
    payload = {key: source.prompt_item() for key, source in items.items()}
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": json.dumps(payload, ensure_ascii=False)},
    ]


# --- turn checks ----------------------------------------------------------------------------------

CITES_SOURCE = "cites the caption or context"
REFUSAL = "refuses or says the text does not tell"
MEDICAL_ADVICE = "gives medical advice"
NOT_CHINESE = "not Chinese"
EMPTY = "empty question or answer"
REPEATED = "repeats an earlier question"

_CITES_SOURCE = re.compile(
    r"(?:根据|依据|按照|据|如|从)(?:图注|图例|图题|标题|题注|上下文|描述|文本|文字|说明|原文|文中|文章|所给|所提供|提供的|给出的)"
    r"|(?:图注|图例|标题|题注|上下文|原文|文中|文本)(?:中|里|所|提到|指出|描述|显示|说明)"
    r"|\b(?:the |this )?(?:caption|context|legend)\b|\bthe (?:text|description)\b|\baccording to\b",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"无法(?:确定|判断|回答|得知|提供|看到|识别|评估)|不能(?:确定|判断|回答)|难以(?:确定|判断)"
    r"|(?:未|没有)(?:提及|提到|说明|给出|提供|描述|明确)|信息不足|不清楚|抱歉|对不起"
    r"|作为(?:一个)?(?:AI|人工智能|语言模型)|\bI (?:cannot|can't|am unable)\b|\bsorry\b"
    r"|\bnot (?:mentioned|specified|provided|stated)\b|\bcannot be determined\b",
    re.IGNORECASE,
)
_MEDICAL_ADVICE = re.compile(
    r"建议(?:您|患者|病人)?(?:及时|尽快|尽早|定期)?(?:就医|就诊|咨询|复查|随访|服用|用药|治疗|手术|检查)"
    r"|请(?:您)?(?:及时|尽快)?(?:就医|就诊|咨询)|遵医嘱|(?:咨询|请教)(?:专业)?(?:医生|医师|专家)"
    r"|应(?:当|该)?(?:及时|尽快|尽早)(?:就医|就诊|治疗)|\bconsult (?:a|your) (?:doctor|physician)\b|\bseek medical\b",
    re.IGNORECASE,
)
_CJK = re.compile(r"[\u4e00-\u9fff]")
_NUMBER = re.compile(r"(?<![A-Za-z\d.])\d+(?:\.\d+)?")  # digits inside a symbol (HER2, T2) belong to the term
_LATIN_TERM = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-/][A-Za-z0-9]+)*")


def _numbers(text: str) -> set[str]:
    return set(_NUMBER.findall(text.replace(",", "")))


@dataclasses.dataclass(frozen=True)
class _SourceIndex:
    numbers: frozenset
    folded: str
    concepts: frozenset


@functools.lru_cache(maxsize=1024)
def _source_index(source_text: str) -> _SourceIndex:
    """What the checks compare answers against; computed once per source, not once per turn."""
    text = unicodedata.normalize("NFKC", source_text)
    return _SourceIndex(
        frozenset(_numbers(text)), fold_en(text), frozenset(concepts(text, CHECKED_CONCEPTS, expand=True))
    )


def _ungrounded_terms(answer: str, folded_source: str) -> list[str]:
    """Latin-script terms of the answer missing from the source; lexicon terms are checked as
    concepts instead (an answer may say MRI where the caption says magnetic resonance)."""
    lexicon_terms = [fold_en(matched) for matched, _ in find_terms(answer, CHECKED_CONCEPTS)]  # "HE染色"
    return [
        term
        for term in _LATIN_TERM.findall(answer)
        if len(term) > 1
        and not re.search(rf"(?<![a-z0-9]){re.escape(fold_en(term))}(?![a-z0-9])", folded_source)
        and not any(fold_en(term) in matched for matched in lexicon_terms)
    ]


def turn_problems(pair: QaPair, source: QaSource) -> list[str]:
    """Why this turn cannot be kept (empty when it can)."""
    question = unicodedata.normalize("NFKC", pair.question).strip()
    answer = unicodedata.normalize("NFKC", pair.answer).strip()
    if not question or not answer:
        return [EMPTY]
    both = f"{question}\n{answer}"
    problems = []
    if _CITES_SOURCE.search(both):
        problems.append(CITES_SOURCE)
    if _REFUSAL.search(answer):
        problems.append(REFUSAL)
    if _MEDICAL_ADVICE.search(both):
        problems.append(MEDICAL_ADVICE)
    if not (_CJK.search(question) and _CJK.search(answer)):
        problems.append(NOT_CHINESE)
    index = _source_index(source.text)  # "PET-CT" and "PET/CT" are one term: folded
    extra_numbers = sorted(_numbers(answer) - index.numbers)
    if extra_numbers:
        problems.append("number not in the source: " + ", ".join(extra_numbers[:3]))
    terms = _ungrounded_terms(answer, index.folded)
    if terms:
        problems.append("term not in the source: " + ", ".join(terms[:3]))
    extra = concepts(answer, CHECKED_CONCEPTS) - index.concepts
    extra_concepts = sorted(f"{category}:{concept_id}" for category, concept_id in extra)
    if extra_concepts:
        problems.append("concept not in the source: " + ", ".join(extra_concepts[:3]))
    return problems


@dataclasses.dataclass(frozen=True)
class Validation:
    kept: list  # QaPair: the turns that pass every check
    problems: list  # str: every problem of the turns left out (or of the reply's shape)
    dropped: int  # turns left out


def validate_pairs(raw: object, source: QaSource) -> Validation:
    """One item's reply, judged turn by turn."""
    if not isinstance(raw, list) or not MIN_PAIRS <= len(raw) <= MAX_PAIRS:
        count = len(raw) if isinstance(raw, list) else type(raw).__name__
        return Validation([], [f"reply has {count} QA pairs, expected {MIN_PAIRS}-{MAX_PAIRS}"], 0)
    kept, problems, asked = [], [], set()
    for item in raw:
        item = item if isinstance(item, dict) else {}
        pair = QaPair(str(item.get(QUESTION, "")).strip(), str(item.get(ANSWER, "")).strip())
        found = turn_problems(pair, source)
        if not found and pair.question in asked:
            found = [REPEATED]
        if found:
            problems.extend(found)
        else:
            asked.add(pair.question)
            kept.append(pair)
    return Validation(kept, problems, len(raw) - len(kept))


def summarize_problems(problems: Sequence[str]) -> str:
    """"2× cites the caption or context; 1× number not in the source: 7", cut to the detail size."""
    counts = Counter(problems)
    text = "; ".join(f"{n}× {problem}" for problem, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return text if len(text) <= DETAIL_MAX_CHARS else text[: DETAIL_MAX_CHARS - 1] + "…"


def estimate_cost(sources: Sequence[QaSource], config: LlmConfig) -> CostEstimate:
    """Requests and tokens generating QA for `sources` would take, assuming no retries; calls nothing."""
    items = [json.dumps(source.prompt_item(), ensure_ascii=False) for source in sources]
    requests = prompt_tokens = 0
    for batch in pack_batches(items, config.batch_items, config.batch_tokens):
        keyed = {str(n): sources[p] for n, p in enumerate(batch, start=1)}
        prompt_tokens += messages_tokens(build_messages(keyed, {}))
        requests += 1
    return CostEstimate(len(sources), requests, prompt_tokens, COMPLETION_TOKENS_PER_ITEM * len(sources))


# --- the generator ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Job:
    position: int
    source: QaSource
    problem: str = ""  # what the previous reply got wrong, for the retry prompt


@dataclasses.dataclass(frozen=True)
class _Outcome:
    job: _Job
    raw: object = None
    error: str = ""  # the request failed: LlmError's detail


class QaGenerator:
    """Generate QA with a JSON client (an `LlmClient`, or anything with its `request_json`,
    `map_concurrent` and `counters`)."""

    def __init__(self, client, config: LlmConfig) -> None:
        self.client = client
        self.config = config
        self.counters: Counters = client.counters

    def generate(self, sources: Sequence[QaSource]) -> list[QaResult]:
        """One result per source, in order: valid pairs, or none and why."""
        self.counters.inc(ITEMS, len(sources))
        results: list[QaResult | None] = [None] * len(sources)
        jobs = [_Job(position, source) for position, source in enumerate(sources)]
        for attempt in range(ATTEMPTS):
            retries = []
            for outcome in self._run(jobs):
                job = outcome.job
                if outcome.error:
                    results[job.position] = self._failed(job, f"QA request failed: {outcome.error}")
                    continue
                judged = self._judge(outcome)
                problems = summarize_problems(judged.problems)
                if judged.kept:
                    results[job.position] = self._generated(job, judged)
                elif attempt + 1 < ATTEMPTS:
                    retries.append(dataclasses.replace(job, problem=problems))
                else:
                    results[job.position] = self._failed(job, f"no valid QA turn: {problems}")
            self.counters.inc(CHECK_RETRIES, len(retries))
            jobs = retries
        return results

    def _judge(self, outcome: _Outcome) -> Validation:
        judged = validate_pairs(outcome.raw, outcome.job.source)
        self.counters.inc(TURNS_DROPPED, judged.dropped)
        return judged

    def _run(self, jobs: list[_Job]) -> list[_Outcome]:
        texts = [json.dumps(job.source.prompt_item(), ensure_ascii=False) for job in jobs]
        batches = pack_batches(texts, self.config.batch_items, self.config.batch_tokens)
        outcomes = self.client.map_concurrent(self._request, [[jobs[p] for p in batch] for batch in batches])
        return [outcome for batch in outcomes for outcome in batch]

    def _request(self, jobs: list[_Job]) -> list[_Outcome]:
        """One request for `jobs`; on failure, halves of it, down to single jobs."""
        keys = [str(n) for n in range(1, len(jobs) + 1)]
        corrections = {key: job.problem for key, job in zip(keys, jobs) if job.problem}
        messages = build_messages({key: job.source for key, job in zip(keys, jobs)}, corrections)
        try:
            reply = self.client.request_json(messages, reply_schema(keys), name=SCHEMA_NAME)
        except LlmError as error:
            if not error.splittable or len(jobs) == 1:
                return [_Outcome(job, error=error.detail) for job in jobs]
            self.counters.inc(BISECTIONS)
            half = len(jobs) // 2
            return self._request(jobs[:half]) + self._request(jobs[half:])
        return [_Outcome(job, raw=reply.get(key)) for key, job in zip(keys, jobs)]

    def _generated(self, job: _Job, judged: Validation) -> QaResult:
        self.counters.inc(GENERATED)
        detail = f"dropped {summarize_problems(judged.problems)}" if judged.problems else ""
        return QaResult(job.source.item_id, tuple(judged.kept), detail[:DETAIL_MAX_CHARS])

    def _failed(self, job: _Job, detail: str) -> QaResult:
        self.counters.inc(FAILED)
        return QaResult(job.source.item_id, detail=detail[:DETAIL_MAX_CHARS])
