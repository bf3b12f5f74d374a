"""The figure record: what flows through the pipeline and what a shard sample's JSON holds."""
from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any

# LLaVA conversation conventions.
HUMAN = "human"
GPT = "gpt"
IMAGE_TOKEN = "<image>"
TURN_FROM = "from"
TURN_VALUE = "value"

Turn = dict  # {"from": HUMAN|GPT, "value": str}: LLaVA's turn shape, kept as a plain dict for JSON


def turn(speaker: str, value: str) -> Turn:
    return {TURN_FROM: speaker, TURN_VALUE: value}


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_KEY_CHARS = 80  # ustar member names hold 100 characters: key + "." + extension must fit


def record_key(record_id: str) -> str:
    """Shard member key: the id reduced to [A-Za-z0-9_-], plus a hash suffix when that changed it.

    WebDataset splits a member name at its first dot, so keys must be dot-free; the suffix keeps
    two ids that reduce (or are shortened) to the same text apart.
    """
    reduced = _KEY_UNSAFE.sub("_", record_id)[:MAX_KEY_CHARS]
    if reduced == record_id:
        return reduced
    return f"{reduced}_{hashlib.sha1(record_id.encode('utf-8')).hexdigest()[:8]}"


def _internal(default: Any = "", factory: Any = None) -> Any:
    """A field that travels with the record but is not part of the sample JSON."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"internal": True})
    return dataclasses.field(default=default, metadata={"internal": True})


@dataclasses.dataclass
class Source:
    pmcid: str = ""
    pmid: str = ""
    figure_id: str = ""
    image: str = ""  # the image path or package member as the input names it
    license: str = ""  # normalized class: cc-by, cc0, pd, ..., unknown
    license_url: str = ""
    title: str = ""
    journal: str = ""
    year: str = ""


@dataclasses.dataclass
class Record:
    """One figure/caption pair. Sample-JSON fields first (in contract order), then internal ones."""

    id: str
    key: str = ""
    caption_en: str = ""
    caption_zh: str = ""
    label: str = ""
    inline_mentions_en: list = dataclasses.field(default_factory=list)
    inline_mentions_zh: list = dataclasses.field(default_factory=list)
    modality: str = ""
    alignment: list = dataclasses.field(default_factory=list)
    conversations: list = dataclasses.field(default_factory=list)
    width: int = 0
    height: int = 0
    original_width: int = 0
    original_height: int = 0
    sha256: str = ""
    phash: str = ""
    source: Source = dataclasses.field(default_factory=Source)

    # Internal: where the record came from and what it carries between stages.
    source_file: str = _internal()  # input file name (basename), for the index
    image_uri: str = _internal()  # where the image stage reads pixels from when not in image_bytes
    caption: str = _internal()  # the caption as given by the input, before cleaning
    lang: str = _internal()  # detected language of the caption
    conversations_lang: str = _internal()  # language of `conversations` as ingested
    image_bytes: bytes = _internal(b"")  # raw input bytes, then the normalized shard image
    phashes: tuple = _internal(())  # companion perceptual hashes (16-hex) near dedup matches besides `phash`
    phashes_windowed: tuple = _internal(())  # Hann-windowed perceptual hashes (16-hex), a hash space of their own
    phash_layouts: tuple = _internal(())  # layout hash (16-hex) of each of (phash, *phashes, *phashes_windowed)
    ink_map: bytes = _internal(b"")  # line art only: small PNG ink map near dedup checks pairs on (until dedup)

    def __post_init__(self) -> None:
        if not self.key:
            self.key = record_key(self.id)

    def sample_json(self) -> dict:
        """The `<key>.json` member: every contract field, never null."""
        return {f.name: _plain(getattr(self, f.name)) for f in SAMPLE_FIELDS}

    def without_image(self) -> "Record":
        """A light copy for shuffles that do not need pixels."""
        return dataclasses.replace(self, image_bytes=b"")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


SAMPLE_FIELDS = tuple(f for f in dataclasses.fields(Record) if not f.metadata.get("internal"))
SAMPLE_FIELD_NAMES = tuple(f.name for f in SAMPLE_FIELDS)
SOURCE_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Source))
