"""Caption stage: clean markup remnants, detect the language, normalize Chinese to Simplified.

English captions go to `caption_en` (translated later), Chinese ones to `caption_zh` via OpenCC
(Traditional -> Simplified). langdetect is seeded, so detection is deterministic; a caption with
a large share of CJK characters is Chinese without asking it (short Chinese text confuses it).
"""
from __future__ import annotations

import dataclasses
import functools
import html
import re
import unicodedata

from schemas import IndexRow, Reason, Record, Stage
from schemas.records import HUMAN, IMAGE_TOKEN, TURN_FROM, TURN_VALUE, turn
from transforms.base import RecordFn

SUPPORTED_LANGUAGES = ("en", "zh")
MAX_CAPTION_CHARS = 4000  # PMC multi-panel captions reach ~3,000 characters; beyond is not a caption
# Inline markup joins its neighbours (T<sub>4</sub> -> T4); any other tag separates words.
_INLINE_TAG = re.compile(r"</?(?:sub|sup|i|b|em|strong|italic|bold|u|span|sc|a)(?:\s[^<>]*)?>", re.IGNORECASE)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>")
_INVISIBLE = re.compile("[\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060\ufeff\u00ad]")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LETTER = re.compile(r"[^\W\d_]")
CJK_SHARE_FOR_CHINESE = 0.3
MIN_LETTERS_TO_DETECT = 3


def clean_text(text: str) -> str:
    """Strip markup remnants (tags, entities, invisible characters) and collapse whitespace."""
    text = html.unescape(_TAG.sub(" ", _INLINE_TAG.sub("", text)))
    text = _INVISIBLE.sub("", unicodedata.normalize("NFC", text))
    return " ".join(text.split())


@functools.lru_cache(maxsize=1)
def _seeded_langdetect():
    from langdetect import DetectorFactory, detect

    DetectorFactory.seed = 0  # langdetect samples at random; a fixed seed makes it deterministic
    return detect


def detect_language(text: str) -> str:
    """'en', 'zh', another ISO code, or '' when nothing can be detected."""
    letters = _LETTER.findall(text)
    if not letters:
        return ""
    if len(_CJK.findall(text)) / len(letters) >= CJK_SHARE_FOR_CHINESE:
        return "zh"
    if len(letters) < MIN_LETTERS_TO_DETECT:  # "(A) 12" would be guessed as anything
        return ""
    from langdetect.lang_detect_exception import LangDetectException

    try:
        language = _seeded_langdetect()(text)
    except LangDetectException:
        return ""
    return "zh" if language.startswith("zh") else language


@functools.lru_cache(maxsize=1)
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    return _t2s().convert(text)


def normalize_conversations(turns: list) -> list:
    """Clean every turn; `<image>` stands once, at the start of the first human turn (LLaVA's form)."""
    cleaned = [turn(t[TURN_FROM], clean_text(t[TURN_VALUE].replace(IMAGE_TOKEN, " "))) for t in turns]
    for item in cleaned:
        if item[TURN_FROM] == HUMAN:
            item[TURN_VALUE] = f"{IMAGE_TOKEN}\n{item[TURN_VALUE]}"
            break
    return cleaned


class CleanCaptionFn(RecordFn):
    stage_name = "text"

    def handle(self, record: Record):
        caption = clean_text(record.caption)
        mentions = [m for m in (clean_text(m) for m in record.inline_mentions_en) if m]
        conversations = normalize_conversations(record.conversations)
        if not caption and not conversations:
            yield IndexRow.rejected(record, Stage.TEXT, Reason.EMPTY_CAPTION, "caption is empty after cleaning")
            return
        if len(caption) > MAX_CAPTION_CHARS:
            yield IndexRow.rejected(
                record, Stage.TEXT, Reason.CAPTION_TOO_LONG, f"{len(caption)} characters over {MAX_CAPTION_CHARS}"
            )
            return
        language = detect_language(caption) if caption else ""
        record = dataclasses.replace(record, lang=language, inline_mentions_en=mentions, conversations=conversations)
        if caption and language not in SUPPORTED_LANGUAGES:
            yield IndexRow.rejected(
                record, Stage.TEXT, Reason.LANGUAGE_UNSUPPORTED, f"caption language {language or 'undetected'}"
            )
            return
        if language == "zh":
            yield dataclasses.replace(record, caption_zh=to_simplified(caption))
        else:
            yield dataclasses.replace(record, caption_en=caption)
