"""EN→ZH translation of TM misses through an LLM: prompt, batches, reply schema, checks, retries.

Pure logic plus `Translator`, which drives a JSON client (`chimed_pipeline.llm.LlmClient`): texts
are packed into batches under a token budget and sent as one JSON object keyed by position; the
`json_schema` response format names exactly those keys, so a reply cannot drop, merge or invent
items. A request that still fails is split in halves down to single items. Every translation is
checked (Simplified Chinese, numbers and panel labels kept, plausible length, no English left over); a
failed check gets one retry whose prompt names the problem. Each item ends translated (with a TM
row) or failed with a reason.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import unicodedata
from typing import Sequence

from chimed_pipeline.llm import (
    ITEM_FRAMING_TOKENS,
    Counters,
    ItemReply,
    LlmConfig,
    estimate_tokens,
    messages_tokens,
    pack_batches,
)
from schemas import Reason, TmKind, TmRow
from schemas.tm import normalize_source
from transforms.glossary import Glossary, Term, load_glossary
from transforms.text import detect_language, to_simplified

PROMPT_VERSION = "en-zh-medical-1"  # bump whenever the prompt or the checks change
SRC_LANG = "en"
TGT_LANG = "zh"
SCHEMA_NAME = "translations"
CORRECTIONS_HEADING = "An earlier translation of these items had problems; avoid them:"
MAX_PROMPT_TERMS = 40
COMPLETION_PER_SOURCE_TOKEN = 1.5  # Chinese output tokens per estimated English input token
MIN_LENGTH_RATIO = 0.15  # Chinese characters per English character, for sources of ...
MAX_LENGTH_RATIO = 1.5
LENGTH_CHECK_MIN_CHARS = 40  # ... at least this long (short texts vary too much)
TRADITIONAL_SHARE = 0.05  # of Han characters that OpenCC t2s changes: a Traditional translation
LEFTOVER_ENGLISH_WORDS = 5  # this many Latin words in a row (mostly lower case) is a sentence
DETAIL_MAX_CHARS = 200

# Counters (published as Beam counters by the DoFn).
ITEMS = "translate.llm_items"
TRANSLATED = "translate.llm_translated"
FAILED = "translate.llm_failed"
CHECK_FAILED = "translate.llm_check_failed"
CHECK_RETRIES = "translate.llm_check_retries"
GLOSSARY_TERMS = "translate.glossary_terms"  # glossary terms met in translated sources
GLOSSARY_FOLLOWED = "translate.glossary_followed"  # ... rendered as the glossary lists them

SYSTEM_PROMPT = """\
You are a senior medical translator. Translate each English text in the user's JSON object into \
fluent, accurate Simplified Chinese as written in Chinese medical journals.
Rules:
- Reply with one JSON object with exactly the keys of the input; each value is the complete \
Chinese translation of that key's text. Translate each text on its own: never merge, split, \
skip or add items, and never add notes.
- Keep every number, unit, range and statistic exactly as written (3.5 mm, ×400, n = 12, \
p < 0.05, 95% CI).
- Keep panel labels exactly as written: (A), (B), (a–c), (i).
- Keep standard abbreviations in Latin letters: CT, MRI, PET, H&E, IHC, DAPI, ELISA, PCR.
- Keep gene and protein symbols (BRCA1, TP53, HER2, Ki-67) and Latin species names as written; \
give drug names their customary Chinese name, or keep the original when there is none.
- Leave no English sentence untranslated."""


@dataclasses.dataclass(frozen=True)
class TranslationItem:
    item_id: str
    text: str
    kind: TmKind = TmKind.CAPTION


@dataclasses.dataclass(frozen=True)
class TranslationResult:
    item_id: str
    target: str = ""
    reason: Reason | None = None  # TRANSLATION_FAILED or TRANSLATION_CHECK_FAILED when no target
    detail: str = ""
    tm_row: TmRow | None = None  # for every successful translation


@dataclasses.dataclass(frozen=True)
class CostEstimate:
    items: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


# --- prompt, schema, batches ------------------------------------------------------------------


def reply_schema(keys: Sequence[str]) -> dict:
    """Exactly these keys, each a string: what a batch's reply must be."""
    return {
        "type": "object",
        "properties": {key: {"type": "string"} for key in keys},
        "required": list(keys),
        "additionalProperties": False,
    }


def system_prompt(terms: Sequence[Term], corrections: dict[str, str]) -> str:
    parts = [SYSTEM_PROMPT]
    if terms:
        parts.append("Terminology (use it where the term occurs):\n" + "\n".join(f"{t.en} = {t.zh}" for t in terms))
    if corrections:
        lines = [f'"{key}": {problem}' for key, problem in corrections.items()]
        parts.append(CORRECTIONS_HEADING + "\n" + "\n".join(lines))
    return "\n\n".join(parts)


def build_messages(texts: dict[str, str], terms: Sequence[Term], corrections: dict[str, str]) -> list[dict]:
    return [
        {"role": "system", "content": system_prompt(terms, corrections)},
        {"role": "user", "content": json.dumps(texts, ensure_ascii=False)},
    ]


def batch_terms(glossary: Glossary, texts: Sequence[str]) -> list[Term]:
    found: dict[str, Term] = {}
    for text in texts:
        for term in glossary.terms_in(text):
            found.setdefault(term.en, term)
    return list(found.values())[:MAX_PROMPT_TERMS]


# --- checks -----------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
_PANEL_LABEL = re.compile(r"\(\s*((?:[A-Za-z]|[ivx]{1,4})(?:\s*[-–,、]\s*(?:[A-Za-z]|[ivx]{1,4}))*)\s*\)")
_LATIN_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")
_LATIN_RUN = re.compile(
    rf"[A-Za-z][A-Za-z'’-]*(?:[ ,;:]+[A-Za-z][A-Za-z'’-]*){{{LEFTOVER_ENGLISH_WORDS - 1},}}"
)
_ASCII_RUN = re.compile(r"[\x00-\x7f]+")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_KANA_HANGUL = re.compile(r"[\u3040-\u30ff\u1100-\u11ff\uac00-\ud7af]")


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


def _panel_labels(text: str) -> set[str]:
    return {re.sub(r"\s+", "", m).replace("–", "-").replace("、", ",") for m in _PANEL_LABEL.findall(text)}


def _english_words(text: str) -> list[str]:
    """Ordinary lower-case words (not abbreviations or symbols)."""
    return [w for w in _LATIN_WORD.findall(text) if len(w) > 2 and w.islower()]


def _chinese_problem(target: str) -> str:
    """Why `target` is not Simplified Chinese ("" when it is).

    The pipeline's language detector (seeded langdetect, CJK share first) runs on the text without
    its ASCII runs: abbreviations, symbols and numbers the rules keep make mixed text read as
    anything. Kana or hangul mean Japanese or Korean; Traditional characters are what OpenCC's
    t2s would change.
    """
    remainder = _ASCII_RUN.sub(" ", target).strip()
    han = len(_HAN.findall(remainder))
    if detect_language(remainder) != "zh" or len(_KANA_HANGUL.findall(remainder)) > han // 10:
        return "not Chinese"
    traditional = sum(a != b for a, b in zip(remainder, to_simplified(remainder)))
    if traditional >= 2 and traditional >= TRADITIONAL_SHARE * han:
        return "Traditional characters: write Simplified Chinese"
    return ""


def check_translation(source: str, target: str) -> list[str]:
    """The problems of `target` as a translation of `source` (empty when it passes)."""
    source = unicodedata.normalize("NFKC", source)
    target = unicodedata.normalize("NFKC", target)
    if not target.strip():
        return ["empty translation"]
    problems = []
    chinese_problem = _chinese_problem(target) if _english_words(source) else ""
    if chinese_problem:
        problems.append(chinese_problem)
    missing_numbers = sorted(_numbers(source) - _numbers(target))
    if missing_numbers:
        problems.append("numbers missing: " + ", ".join(missing_numbers[:8]))
    missing_labels = sorted(_panel_labels(source) - _panel_labels(target))
    if missing_labels:
        problems.append("panel labels missing: " + ", ".join(f"({label})" for label in missing_labels[:8]))
    if len(source) >= LENGTH_CHECK_MIN_CHARS:
        ratio = len(target) / len(source)
        if ratio < MIN_LENGTH_RATIO:
            problems.append(f"too short for the source (length ratio {ratio:.2f}): something was left out")
        elif ratio > MAX_LENGTH_RATIO:
            problems.append(f"too long for the source (length ratio {ratio:.2f}): something was added")
    leftover = [run for run in _LATIN_RUN.findall(target) if len(_english_words(run)) >= 3]
    if leftover:
        problems.append(f'English left untranslated: "{leftover[0][:60]}"')
    return problems


def _short(text: str) -> str:
    return text if len(text) <= DETAIL_MAX_CHARS else text[: DETAIL_MAX_CHARS - 1] + "…"


# --- dry run ----------------------------------------------------------------------------------


def estimate_cost(texts: Sequence[str], config: LlmConfig, glossary: Glossary) -> CostEstimate:
    """Requests and tokens translating `texts` would take, assuming no retries; calls nothing."""
    sources = [normalize_source(text) for text in texts if normalize_source(text)]
    requests = prompt_tokens = 0
    for batch in pack_batches(sources, config.batch_items, config.batch_tokens):
        batch_texts = [sources[p] for p in batch]
        keyed = {str(n): text for n, text in enumerate(batch_texts, start=1)}
        prompt_tokens += messages_tokens(build_messages(keyed, batch_terms(glossary, batch_texts), {}))
        requests += 1
    completion = sum(math.ceil(estimate_tokens(s) * COMPLETION_PER_SOURCE_TOKEN) + ITEM_FRAMING_TOKENS for s in sources)
    return CostEstimate(
        items=len(sources), requests=requests, prompt_tokens=prompt_tokens, completion_tokens=completion
    )


# --- the translator -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Job:
    position: int  # in the caller's item list
    source: str  # normalized text
    problem: str = ""  # what the previous translation got wrong, for the retry prompt


class Translator:
    """Translate TM misses with an `LlmClient` (or anything with its `request_batched` and
    `counters`)."""

    def __init__(self, client, config: LlmConfig, glossary: Glossary | None = None) -> None:
        self.client = client
        self.config = config
        self.glossary = glossary if glossary is not None else load_glossary()
        self.counters: Counters = client.counters

    def translate(self, items: Sequence[TranslationItem]) -> list[TranslationResult]:
        """One result per item, in order: a target and TM row, or a reason and detail.

        Two passes: everything, then what failed a check, with the problem named in the prompt.
        """
        self.counters.inc(ITEMS, len(items))
        results: list[TranslationResult | None] = [None] * len(items)
        jobs = []
        for position, item in enumerate(items):
            source = normalize_source(item.text)
            if source:
                jobs.append(_Job(position, source))
            else:
                results[position] = self._failed(item, Reason.TRANSLATION_FAILED, "empty text")
        for last_pass in (False, True):
            retries = []
            for reply in self._run(jobs):
                job, item = reply.item, items[reply.item.position]
                target = reply.value.strip() if isinstance(reply.value, str) else ""
                problems = [] if reply.error else check_translation(job.source, target)
                if reply.error:
                    detail = f"check failed ({job.problem}); retry: {reply.error}" if job.problem else reply.error
                    results[job.position] = self._failed(item, Reason.TRANSLATION_FAILED, detail)
                elif not problems:
                    results[job.position] = self._translated(item, job, target)
                elif last_pass:
                    results[job.position] = self._failed(item, Reason.TRANSLATION_CHECK_FAILED, "; ".join(problems))
                else:
                    retries.append(dataclasses.replace(job, problem="; ".join(problems)))
            self.counters.inc(CHECK_RETRIES, len(retries))
            jobs = retries
        return results

    def _run(self, jobs: list[_Job]) -> list[ItemReply]:
        return self.client.request_batched(jobs, [job.source for job in jobs], self._messages, name=SCHEMA_NAME)

    def _messages(self, keyed: dict[str, _Job]) -> tuple[list[dict], dict]:
        texts = {key: job.source for key, job in keyed.items()}
        corrections = {key: job.problem for key, job in keyed.items() if job.problem}
        terms = batch_terms(self.glossary, list(texts.values()))
        return build_messages(texts, terms, corrections), reply_schema(list(keyed))

    def _translated(self, item: TranslationItem, job: _Job, target: str) -> TranslationResult:
        self.counters.inc(TRANSLATED)
        use = self.glossary.use(job.source, target)
        self.counters.inc(GLOSSARY_TERMS, use.applicable)
        self.counters.inc(GLOSSARY_FOLLOWED, use.followed)
        row = TmRow(
            source=job.source,
            target=target,
            src_lang=SRC_LANG,
            tgt_lang=TGT_LANG,
            kind=TmKind(item.kind).value,
            model=self.config.model,
            prompt_version=PROMPT_VERSION,
        )
        return TranslationResult(item.item_id, target=target, tm_row=row)

    def _failed(self, item: TranslationItem, reason: Reason, detail: str) -> TranslationResult:
        self.counters.inc(CHECK_FAILED if reason == Reason.TRANSLATION_CHECK_FAILED else FAILED)
        return TranslationResult(item.item_id, reason=reason, detail=_short(detail))


def glossary_consistency(counters: Counters) -> float | None:
    """Share of glossary terms met in translated sources that were rendered as listed."""
    terms = counters.get(GLOSSARY_TERMS)
    return counters.get(GLOSSARY_FOLLOWED) / terms if terms else None
