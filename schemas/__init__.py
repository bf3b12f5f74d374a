"""The single source of field names, statuses, reasons and file names.

Everything that other tools read (shard members, the index, the manifest, the
translation memory) is spelled here once; pipeline code imports these names
instead of re-typing strings.
"""
from schemas.records import (  # noqa: F401
    Record,
    Source,
    Turn,
    record_key,
)
from schemas.index import INDEX_COLUMNS, INDEX_SCHEMA, IndexRow  # noqa: F401
from schemas.enums import Reason, Stage, Status  # noqa: F401
from schemas.release import (  # noqa: F401
    FileInfo,
    ShardInfo,
    index_part_name,
    shard_name,
    tm_part_name,
)
from schemas.tm import TmKind, TmRow, tm_lookup_key  # noqa: F401
