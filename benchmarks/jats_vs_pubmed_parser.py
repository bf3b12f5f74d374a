"""Figures and captions found by transforms.jats vs pubmed_parser on the same JATS files.

    .venv/bin/python benchmarks/jats_vs_pubmed_parser.py [FILE_OR_DIR ...]

Defaults to ../shared/samples/jats. Prints one markdown row per file: figures each parser finds,
captions whose text both give identically (whitespace collapsed), caption words pubmed_parser
loses against ours, and the parse time ratio (pubmed_parser / ours, same process). pubmed_parser is
a dev-only comparison dependency (`pip install pubmed_parser`), not used by the pipeline.
"""
from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import pubmed_parser

from transforms.jats import parse_article

DEFAULT_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "jats"
REPEATS = 5


def _words(text: str) -> collections.Counter:
    return collections.Counter((text or "").split())


def _timed(function, *args):
    start = time.perf_counter()
    for _ in range(REPEATS):
        result = function(*args)
    return result, (time.perf_counter() - start) / REPEATS


def _pubmed_parser_figures(path: Path) -> list[dict]:
    try:
        return pubmed_parser.parse_pubmed_caption(str(path)) or []
    except Exception as error:  # a crash is a result here: report it as "found nothing"
        print(f"pubmed_parser failed on {path.name}: {type(error).__name__}: {error}", file=sys.stderr)
        return []


def compare(path: Path) -> dict:
    data = path.read_bytes()
    article, ours_seconds = _timed(parse_article, data)
    theirs, theirs_seconds = _timed(_pubmed_parser_figures, path)
    ours = {figure.figure_id: figure.caption for figure in article.figures}
    theirs_by_id = {figure["fig_id"]: " ".join((figure["fig_caption"] or "").split()) for figure in theirs}
    shared = [fig_id for fig_id in ours if fig_id in theirs_by_id]
    return {
        "file": path.name,
        "ours": len(ours),
        "ours_captioned": sum(1 for caption in ours.values() if caption),
        "theirs": len(theirs_by_id),
        "identical": sum(1 for fig_id in shared if ours[fig_id] == theirs_by_id[fig_id]),
        "words_lost": sum(sum((_words(ours[fig_id]) - _words(theirs_by_id[fig_id])).values()) for fig_id in shared),
        "time_ratio": theirs_seconds / ours_seconds if ours_seconds else float("nan"),
    }


def main(argv: list[str]) -> int:
    paths = [Path(arg) for arg in argv] or [DEFAULT_SAMPLES]
    files = sorted(file for path in paths for file in (path.iterdir() if path.is_dir() else [path]))
    if not files:
        print(f"no JATS files under {paths}", file=sys.stderr)
        return 1
    rows = [compare(file) for file in files]
    print("| file | figures (ours) | with caption (ours) | figures (pubmed_parser) | identical captions "
          "| caption words pubmed_parser loses | time pubmed_parser / ours |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['file']} | {row['ours']} | {row['ours_captioned']} | {row['theirs']} | {row['identical']} "
              f"| {row['words_lost']} | {row['time_ratio']:.2f} |")
    totals = {key: sum(row[key] for row in rows) for key in ("ours", "ours_captioned", "theirs", "identical",
                                                            "words_lost")}
    print(f"| **total** | {totals['ours']} | {totals['ours_captioned']} | {totals['theirs']} | {totals['identical']} "
          f"| {totals['words_lost']} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
