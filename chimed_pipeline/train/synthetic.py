"""Synthetic shards in the release format, for tests, the data-loader benchmark and the GPU check.

Written with the standard library's tarfile (the GPU machine has no Beam and no webdataset), one
`<key>.jpg`, `<key>.txt`, `<key>.json` per sample, the JSON from `schemas.Record` so the fields
are the contract's. Images are drawn figures (gradients, shapes, noise), captions are assembled
from a few Chinese medical phrases; both are deterministic in `seed`.
"""
from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

from chimed_pipeline.train.data import CAPTION_EXTENSION, IMAGE_EXTENSIONS, RECORD_EXTENSION
from schemas.records import GPT, HUMAN, IMAGE_TOKEN, Record, turn
from schemas.release import SHARDS_DIR, shard_name

_FINDINGS = ("胸部CT显示右肺下叶结节", "腹部超声可见肝内低回声区", "头颅MRI T2加权像示左侧基底节高信号",
             "病理切片HE染色（×200）示肿瘤细胞浸润", "冠状动脉造影显示前降支狭窄约70%", "X线片示左侧股骨颈骨折")
_DETAILS = ("箭头所示为病灶", "边界清晰", "伴周围水肿", "治疗后复查病灶缩小", "未见明显淋巴结肿大", "比例尺为50 μm")
_QUESTIONS = ("这张图像显示了什么？", "图中箭头指向的结构是什么？", "这是哪种成像方式？")


def caption(rng: random.Random) -> str:
    return f"{rng.choice(_FINDINGS)}，{rng.choice(_DETAILS)}。"


def figure_jpeg(rng: random.Random, width: int, height: int) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(4, max(5, min(width, height) // 4))
        color = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=color)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def synthetic_record(index: int, rng: random.Random, with_conversations: bool) -> Record:
    """A kept figure record: caption, alignment turns and (optionally) a two-round QA."""
    text = caption(rng)
    record = Record(id=f"PMC{1000000 + index}_F{index % 7 + 1}", caption_zh=text)
    record.alignment = [turn(HUMAN, f"{IMAGE_TOKEN}\n请描述这张医学图像。"), turn(GPT, text)]
    if with_conversations:
        record.conversations = [
            turn(HUMAN, f"{IMAGE_TOKEN}\n{rng.choice(_QUESTIONS)}"),
            turn(GPT, text),
            turn(HUMAN, "还有其他发现吗？"),
            turn(GPT, rng.choice(_DETAILS) + "。"),
        ]
    return record


def write_synthetic_release(
    root: Path,
    samples: int,
    shard_samples: int,
    image_size: tuple = (96, 72),
    without_conversations: int = 0,
    seed: int = 0,
) -> list:
    """`root/shards/chimed-vl-NNNNNN.tar`; returns the shard paths. The first
    `without_conversations` samples have no stage-2 turns (as a release built without QA)."""
    rng = random.Random(seed)
    (root / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    paths = []
    for number, start in enumerate(range(0, samples, shard_samples)):
        path = root / shard_name(number)
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(start, min(start + shard_samples, samples)):
                record = synthetic_record(index, rng, with_conversations=index >= without_conversations)
                width, height = image_size
                record.width, record.height = width, height
                members = {
                    IMAGE_EXTENSIONS[0]: figure_jpeg(rng, width, height),
                    CAPTION_EXTENSION: record.caption_zh.encode("utf-8"),
                    RECORD_EXTENSION: json.dumps(record.sample_json(), ensure_ascii=False).encode("utf-8"),
                }
                for extension, data in members.items():
                    info = tarfile.TarInfo(f"{record.key}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths
