"""Instruction stage: stage-1 alignment turns (LLaVA form) for every record with a Chinese caption.

The instruction is one of several Chinese "describe the image" phrasings, picked from the record's
key by hash: deterministic, and spread evenly so a model does not learn a single prompt.
"""
from __future__ import annotations

import dataclasses
import hashlib

from schemas import Record
from schemas.records import GPT, HUMAN, IMAGE_TOKEN, turn
from transforms.base import RecordFn

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


class BuildInstructionsFn(RecordFn):
    stage_name = "instruct"

    def handle(self, record: Record):
        yield dataclasses.replace(record, alignment=alignment_turns(record))
