"""Ingest stage: input paths/globs -> Records (one per figure or manifest row) + rows for unreadable input.

Globs are expanded on the workers (fileio.MatchAll), never at pipeline construction, so a Dataflow
launcher needs no access to gs:// or s3:// inputs. Each matched file is read by one reader, chosen
by its name (PMC articles: transforms/articles.py, docs/ingest-pmc.md); records are then reshuffled
so that the image stage spreads over all workers.
"""
from __future__ import annotations

import functools
import io
import os
import posixpath

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas import IndexRow, Reason, Record, Stage
from transforms.articles import ArticleSummary, FileAccess, is_article_input, read_article_input
from transforms.base import RecordFn, StageResult, apply_stage, publish
from transforms.filelist import ArticleSelection, parse_file_list, parse_pmcids
from transforms.licenses import LicensePolicy
from transforms.manifests import is_manifest, read_manifest


def _open_raw(path: str):
    # UNCOMPRESSED: FileSystems would otherwise gunzip a .tar.gz by its name.
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _list_dir(path: str) -> list[str]:
    return sorted(m.path for m in FileSystems.match([FileSystems.join(path, "*")])[0].metadata_list)


# Object stores have no directories: a directory input is a local one (remote: glob its XML files).
BEAM_FILES = FileAccess(open=_open_raw, exists=FileSystems.exists, list_dir=_list_dir,
                        is_dir=lambda path: "://" not in path and os.path.isdir(path))


@functools.lru_cache(maxsize=4)
def load_selection(pmcids: str, file_list: str, policy: LicensePolicy | None) -> ArticleSelection:
    """`--pmcids` / `--file-list` read once per worker process (shared by its DoFn instances)."""

    def lines(path: str):
        with _open_raw(path) as handle:
            yield from io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")

    wanted = parse_pmcids(lines(pmcids)) if pmcids else None
    listed = parse_file_list(lines(file_list), keep=wanted) if file_list else {}
    return ArticleSelection(pmcids=wanted, file_list=listed, policy=policy if file_list else None)


def read_input_file(path: str, images_root: str, selection: ArticleSelection = ArticleSelection()):
    """Records (or rejected rows, or ArticleSummaries) of one input file; dispatch by file name."""
    if is_article_input(path) or BEAM_FILES.is_dir(path):
        return read_article_input(path, BEAM_FILES, selection)
    if is_manifest(path):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            data = handle.read()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            stub = Record(id=posixpath.basename(path), source_file=posixpath.basename(path))
            return [IndexRow.rejected(stub, Stage.INGEST, Reason.MALFORMED_RECORD, f"not UTF-8: {error.reason}")]
        return read_manifest(text, path, images_root)
    stub = Record(id=posixpath.basename(path), source_file=posixpath.basename(path))
    return [IndexRow.rejected(stub, Stage.INGEST, Reason.MALFORMED_RECORD, "unsupported input file type")]


class ReadInputFileFn(RecordFn):
    stage_name = "ingest"

    def __init__(self, images_root: str, pmcids: str = "", file_list: str = "",
                 policy: LicensePolicy | None = None) -> None:
        super().__init__()
        self.images_root = images_root
        self.selection_files = (pmcids, file_list, policy)

    def handle(self, path: str):
        for item in read_input_file(path, self.images_root, load_selection(*self.selection_files)):
            if isinstance(item, ArticleSummary):  # articles are counted, not indexed: they are not records
                yield from publish({
                    "ingest.articles_skipped": int(bool(item.skipped)),
                    "ingest.articles_read": int(not item.skipped),
                    "ingest.articles_without_figures": int(not item.skipped and not item.figures),
                })
            else:
                yield item


class ReadInputs(beam.PTransform):
    """`pmcids` / `file_list`: paths of `--pmcids` / `--file-list` files ("" for none); `policy`
    skips articles whose file-list license it rejects, unread."""

    def __init__(self, patterns: list[str], images_root: str = "", pmcids: str = "", file_list: str = "",
                 policy: LicensePolicy | None = None) -> None:
        super().__init__()
        # "dir/" would match the files inside (its media too); "dir" is the article directory itself.
        self.patterns = sorted({p.rstrip("/") if BEAM_FILES.is_dir(p) else p for p in patterns})
        self.images_root = images_root
        self.selection_files = (pmcids, file_list, policy)

    def expand(self, pbegin) -> StageResult:
        paths = (
            pbegin
            | "Patterns" >> beam.Create(self.patterns)
            | "Match" >> fileio.MatchAll()
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "SpreadFiles" >> beam.Reshuffle()
        )
        result = apply_stage(paths, "ReadFiles", ReadInputFileFn(self.images_root, *self.selection_files))
        return StageResult(result.records | "SpreadRecords" >> beam.Reshuffle(), result.rows, result.facts)
