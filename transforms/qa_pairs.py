"""Question/answer pairs and their LLaVA conversation form (shared by every stage-2 QA source)."""
from __future__ import annotations

import dataclasses
import re

from schemas.records import GPT, HUMAN, IMAGE_TOKEN, TURN_FROM, TURN_VALUE, Turn, turn

_IMAGE_TOKEN = re.compile(rf"\s*{re.escape(IMAGE_TOKEN)}\s*")


@dataclasses.dataclass(frozen=True)
class QaPair:
    question: str
    answer: str


def llava_conversation(pairs: list[QaPair]) -> list[Turn]:
    """LLaVA turns, human first, alternating, with `<image>` once: at the start of the first question."""
    turns: list[Turn] = []
    for number, pair in enumerate(pairs):
        question = f"{IMAGE_TOKEN}\n{pair.question}" if number == 0 else pair.question
        turns += [turn(HUMAN, question), turn(GPT, pair.answer)]
    return turns


def conversation_pairs(turns: list) -> list[QaPair]:
    """The answered questions of an ingested LLaVA conversation, `<image>` markers removed.

    A human turn counts when the next turn is the gpt answer to it; anything else (a trailing
    question, two answers in a row, an empty value) carries no QA pair and is left out.
    """
    pairs = []
    for asked, answered in zip(turns, turns[1:]):
        if not (isinstance(asked, dict) and isinstance(answered, dict)):
            continue
        if asked.get(TURN_FROM) != HUMAN or answered.get(TURN_FROM) != GPT:
            continue
        question = _IMAGE_TOKEN.sub(" ", str(asked.get(TURN_VALUE) or "")).strip()
        answer = str(answered.get(TURN_VALUE) or "").strip()
        if question and answer:
            pairs.append(QaPair(question, answer))
    return pairs
