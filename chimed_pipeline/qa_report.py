"""Stage-2 QA statistics of a built dataset, side by side with ChiMed-VL's published figures.

Pure: it reads sample JSON dicts (`<key>.json` of the shards) and counts QA pairs per sample,
question and answer lengths in jieba tokens, and the modality mix. Lengths count jieba's words,
leaving out whitespace, punctuation and the `<image>` marker, so "这是什么类型的影像？" is 6 tokens.
"""
from __future__ import annotations

import functools
import logging
import statistics
import unicodedata
from collections import Counter
from typing import Iterable

from schemas.records import GPT, HUMAN, IMAGE_TOKEN, TURN_FROM, TURN_VALUE

# ChiMed-VL (Qilin-Med-VL, Liu et al. 2023): 469,441 QA pairs; median question ~20 and answer ~22 tokens.
CHIMED_VL_REFERENCE = {"qa_pairs": 469_441, "question_tokens_median": 20, "answer_tokens_median": 22}
UNKNOWN_MODALITY = "unknown"


@functools.lru_cache(maxsize=1)
def _tokenizer():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # it logs dictionary loading at DEBUG through its own handler
    return jieba.Tokenizer()  # jieba's own dictionary, untouched by anything else that adds words


def _is_word(token: str) -> bool:
    return any(unicodedata.category(ch)[0] in "LN" for ch in token)


def jieba_tokens(text: str) -> int:
    """Words in `text` by jieba (default dictionary, no HMM): punctuation and whitespace are not words."""
    return sum(1 for token in _tokenizer().lcut(text.replace(IMAGE_TOKEN, " "), HMM=False) if _is_word(token))


def qa_pairs_of(conversation: list) -> list[tuple[str, str]]:
    """(question, answer) for each human turn followed by a gpt turn."""
    return [
        (asked[TURN_VALUE], answered[TURN_VALUE])
        for asked, answered in zip(conversation, conversation[1:])
        if asked.get(TURN_FROM) == HUMAN and answered.get(TURN_FROM) == GPT
    ]


def _summary(values: list[int]) -> dict:
    if not values:
        return {"median": 0, "mean": 0.0, "min": 0, "max": 0}
    return {
        "median": statistics.median(values),
        "mean": round(statistics.fmean(values), 2),
        "min": min(values),
        "max": max(values),
    }


def qa_stats(samples: Iterable[dict]) -> dict:
    """QA statistics over sample JSON dicts (each with `conversations` and `modality`)."""
    pairs_per_sample, question_lengths, answer_lengths = [], [], []
    modalities: Counter = Counter()
    samples_seen = 0
    for sample in samples:
        samples_seen += 1
        modalities[sample.get("modality") or UNKNOWN_MODALITY] += 1
        pairs = qa_pairs_of(sample.get("conversations") or [])
        pairs_per_sample.append(len(pairs))
        question_lengths += [jieba_tokens(question) for question, _ in pairs]
        answer_lengths += [jieba_tokens(answer) for _, answer in pairs]
    return {
        "samples": samples_seen,
        "samples_with_qa": sum(1 for n in pairs_per_sample if n),
        "qa_pairs": sum(pairs_per_sample),
        "qa_pairs_per_sample": _summary([n for n in pairs_per_sample if n]),
        "question_tokens": _summary(question_lengths),
        "answer_tokens": _summary(answer_lengths),
        "modality": dict(sorted(modalities.items(), key=lambda kv: (-kv[1], kv[0]))),
        "reference": dict(CHIMED_VL_REFERENCE),
    }


def qa_stats_markdown(stats: dict) -> str:
    """A short Markdown table: this dataset next to ChiMed-VL, then the modality mix."""
    reference = stats["reference"]
    rows = [
        ("QA pairs", stats["qa_pairs"], f"{reference['qa_pairs']:,}"),
        ("samples with QA", f"{stats['samples_with_qa']} / {stats['samples']}", ""),
        ("QA pairs per sample (median / mean)",
         f"{stats['qa_pairs_per_sample']['median']} / {stats['qa_pairs_per_sample']['mean']}", ""),
        ("question length, jieba tokens (median)", stats["question_tokens"]["median"], f"~{reference['question_tokens_median']}"),
        ("answer length, jieba tokens (median)", stats["answer_tokens"]["median"], f"~{reference['answer_tokens_median']}"),
    ]
    lines = ["| | this dataset | ChiMed-VL |", "|---|---|---|"]
    lines += [f"| {name} | {ours} | {theirs} |" for name, ours, theirs in rows]
    total = stats["samples"] or 1
    lines += ["", "| modality | samples | share |", "|---|---|---|"]
    lines += [f"| {name} | {n} | {n / total:.0%} |" for name, n in stats["modality"].items()]
    return "\n".join(lines) + "\n"
