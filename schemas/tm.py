"""Translation-memory rows and their lookup key."""
from __future__ import annotations

import dataclasses
import enum
import unicodedata


class TmKind(str, enum.Enum):
    CAPTION = "caption"
    MENTION = "mention"
    QA = "qa"


@dataclasses.dataclass(frozen=True)
class TmRow:
    source: str
    target: str
    src_lang: str = "en"
    tgt_lang: str = "zh"
    kind: str = TmKind.CAPTION.value
    model: str = ""
    prompt_version: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> "TmRow":
        """A row from a TM file; only `source` and `target` are required."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: str(v) for k, v in row.items() if k in known})

    @property
    def lookup_key(self) -> str:
        return tm_lookup_key(self.source, self.tgt_lang, self.kind)


def normalize_source(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def tm_lookup_key(source: str, tgt_lang: str, kind: str) -> str:
    """NFKC source with whitespace collapsed + target language + kind (DESIGN appendix)."""
    return f"{tgt_lang}\x1f{kind}\x1f{normalize_source(source)}"
