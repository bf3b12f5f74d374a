"""The per-record index: one row per input record, whatever its fate."""
from __future__ import annotations

import dataclasses

import pyarrow as pa

from schemas.enums import Reason, Stage, Status
from schemas.records import Record


@dataclasses.dataclass(frozen=True)
class IndexRow:
    id: str
    key: str
    status: str
    reason: str = ""
    detail: str = ""
    stage: str = ""
    duplicate_of: str = ""
    shard: str = ""
    source_file: str = ""
    source_image: str = ""
    pmcid: str = ""
    pmid: str = ""
    figure_id: str = ""
    caption: str = ""
    lang: str = ""
    license: str = ""
    sha256: str = ""
    phash: str = ""
    width: int = 0
    height: int = 0

    @classmethod
    def of(
        cls,
        record: Record,
        status: Status,
        stage: Stage | None = None,
        reason: Reason | None = None,
        detail: str = "",
        duplicate_of: str = "",
        shard: str = "",
    ) -> "IndexRow":
        return cls(
            id=record.id,
            key=record.key,
            status=status.value,
            reason=reason.value if reason else "",
            detail=detail,
            stage=stage.value if stage else "",
            duplicate_of=duplicate_of,
            shard=shard,
            source_file=record.source_file,
            source_image=record.source.image,
            pmcid=record.source.pmcid,
            pmid=record.source.pmid,
            figure_id=record.source.figure_id,
            caption=record.caption,
            lang=record.lang,
            license=record.source.license,
            sha256=record.sha256,
            phash=record.phash,
            width=record.original_width,
            height=record.original_height,
        )

    @classmethod
    def rejected(cls, record: Record, stage: Stage, reason: Reason, detail: str = "") -> "IndexRow":
        return cls.of(record, Status.REJECTED, stage, reason, detail)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


_ARROW_TYPES = {str: pa.string(), int: pa.int64(), "str": pa.string(), "int": pa.int64()}
INDEX_SCHEMA = pa.schema([(f.name, _ARROW_TYPES[f.type]) for f in dataclasses.fields(IndexRow)])
INDEX_COLUMNS = tuple(INDEX_SCHEMA.names)
