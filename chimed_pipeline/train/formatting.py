"""Shard sample text -> token ids and labels, with the loss on the assistant's words only.

Two formats, as in LLaVA:
- plain (stage-1 alignment): `<image>` + caption + EOS, the loss on the caption and EOS;
- chat: the turns rendered with the LLM's own chat template. Each assistant turn's characters are
  located by rendering the conversation up to that turn (with and without the generation prompt)
  and checking that every such rendering is a prefix of the full one; tokens are then labelled by
  their character offsets. A template that does not render that way (its generation prompt differs
  from how it renders an assistant turn, it drops or rewrites earlier turns, it ignores the roles
  we give it) cannot be labelled safely: the sample is reported as masked, never trained on
  silently with wrong labels, and the trainer fails when too many are.

`<image>` is one special token in the text; after tokenization it is expanded to as many
placeholder ids as the vision tower yields patch features (what LlavaProcessor does at inference).
"""
from __future__ import annotations

import dataclasses
import enum

import numpy as np

from schemas.records import GPT, HUMAN, IMAGE_TOKEN, TURN_FROM, TURN_VALUE

IGNORE_INDEX = -100  # the label value transformers' loss skips
SYSTEM = "system"
ROLE_OF_SPEAKER = {HUMAN: "user", GPT: "assistant", SYSTEM: "system"}


class TextFormat(str, enum.Enum):
    PLAIN = "plain"
    CHAT = "chat"


class Verdict(str, enum.Enum):
    """What became of one shard sample in the data loader."""

    USED = "used"
    NO_TURNS = "no_turns"  # nothing to learn for this stage (e.g. empty `conversations`): skipped
    UNREADABLE = "unreadable"  # undecodable image or JSON, malformed turns
    # The sample has turns but gives no training signal ("fully masked"):
    TEMPLATE_MISMATCH = "template_mismatch"
    NO_IMAGE_TOKEN = "no_image_token"  # the template dropped the image placeholder
    NO_LABELS = "no_labels"
    TRUNCATED = "truncated"  # cut to nothing (or into the image) by --max-length


MASKED_VERDICTS = frozenset(
    {Verdict.TEMPLATE_MISMATCH, Verdict.NO_IMAGE_TOKEN, Verdict.NO_LABELS, Verdict.TRUNCATED}
)


@dataclasses.dataclass
class Encoded:
    input_ids: list
    labels: list


def normalize_turns(turns: list) -> list:
    """LLaVA's convention: exactly one `<image>`, at the start of the first human turn.

    Raises ValueError on turns that are not `{"from": human|gpt|system, "value": str}`.
    """
    normalized = []
    for turn in turns:
        if not isinstance(turn, dict) or turn.get(TURN_FROM) not in ROLE_OF_SPEAKER:
            raise ValueError(f"malformed turn: {turn!r:.80}")
        value = turn.get(TURN_VALUE)
        if not isinstance(value, str):
            raise ValueError(f"turn value is not text: {value!r:.80}")
        normalized.append({TURN_FROM: turn[TURN_FROM], TURN_VALUE: value.replace(IMAGE_TOKEN, "").strip()})
    first_human = next((t for t in normalized if t[TURN_FROM] == HUMAN), None)
    if first_human is None:
        raise ValueError("no human turn")
    first_human[TURN_VALUE] = f"{IMAGE_TOKEN}\n{first_human[TURN_VALUE]}"
    return normalized


def assistant_char_spans(messages: list, render) -> list | None:
    """[start, end) character spans of the assistant turns in `render(messages)`.

    `render(messages, add_generation_prompt)` is the chat template. None when the template does
    not render the conversation as a sequence of prefixes (the LLaVA "tokenization mismatch").
    """
    full = render(messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != ROLE_OF_SPEAKER[GPT]:
            continue
        prompt = render(messages[:i], True)
        through = render(messages[: i + 1], False)
        if not (full.startswith(through) and through.startswith(prompt) and len(through) > len(prompt)):
            return None
        spans.append((len(prompt), len(through)))
    return spans


class TextEncoder:
    """Encodes one sample's turns for the model; picklable, so data-loader workers carry it."""

    def __init__(self, tokenizer, text_format: TextFormat, num_image_tokens: int, max_length: int):
        self.tokenizer = tokenizer
        self.text_format = TextFormat(text_format)
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if self.text_format is TextFormat.CHAT and not tokenizer.chat_template:
            raise ValueError("the LLM's tokenizer has no chat template; pass --chat-template FILE")
        if self.text_format is TextFormat.PLAIN and tokenizer.eos_token_id is None:
            raise ValueError("the plain format ends each caption with EOS; the tokenizer has none")

    def encode(self, turns: list) -> Encoded | Verdict:
        """Token ids and labels for `turns` (already normalized), or why there are none."""
        if not any(t[TURN_FROM] == GPT and t[TURN_VALUE] for t in turns):
            return Verdict.NO_TURNS
        if self.text_format is TextFormat.PLAIN:
            ids, labels = self._plain(turns)
        else:
            tokenized = self._chat(turns)
            if tokenized is None:
                return Verdict.TEMPLATE_MISMATCH
            ids, labels = tokenized
        return self._expand_image_and_truncate(ids, labels)

    def _plain(self, turns: list) -> tuple[list, list]:
        caption = next(t[TURN_VALUE] for t in turns if t[TURN_FROM] == GPT and t[TURN_VALUE])
        prompt = self.tokenizer(IMAGE_TOKEN, add_special_tokens=True).input_ids
        answer = self.tokenizer(caption, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]
        return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer

    def _chat(self, turns: list) -> tuple[list, list] | None:
        messages = [{"role": ROLE_OF_SPEAKER[t[TURN_FROM]], "content": t[TURN_VALUE]} for t in turns]
        spans = assistant_char_spans(messages, self._render)
        if spans is None:
            return None
        encoding = self.tokenizer(
            self._render(messages, False), add_special_tokens=False, return_offsets_mapping=True
        )
        ids = np.asarray(encoding.input_ids, dtype=np.int64)
        starts = np.asarray(encoding.offset_mapping, dtype=np.int64).reshape(-1, 2)[:, 0]
        learned = np.zeros(len(ids), dtype=bool)
        for start, end in spans:
            learned |= (starts >= start) & (starts < end)
        return ids.tolist(), np.where(learned, ids, IGNORE_INDEX).tolist()

    def _render(self, messages: list, add_generation_prompt: bool) -> str:
        if not messages:
            # Templates differ on an empty conversation; what precedes the first turn is the
            # rendering of a conversation cut before it, which is the empty string.
            return ""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _expand_image_and_truncate(self, ids: list, labels: list) -> Encoded | Verdict:
        positions = [i for i, token in enumerate(ids) if token == self.image_token_id]
        if len(positions) != 1:
            return Verdict.NO_IMAGE_TOKEN
        at = positions[0]
        image = [self.image_token_id] * self.num_image_tokens
        ids = ids[:at] + image + ids[at + 1 :]
        labels = labels[:at] + [IGNORE_INDEX] * self.num_image_tokens + labels[at + 1 :]
        if len(ids) > self.max_length:
            if at + self.num_image_tokens > self.max_length:
                return Verdict.TRUNCATED
            ids, labels = ids[: self.max_length], labels[: self.max_length]
            if all(label == IGNORE_INDEX for label in labels[1:]):
                return Verdict.TRUNCATED
        if all(label == IGNORE_INDEX for label in labels[1:]):  # the first token is never predicted
            return Verdict.NO_LABELS
        return Encoded(input_ids=ids, labels=labels)
