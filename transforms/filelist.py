"""PMC's OA file lists and `--pmcids` files -> what the article reader needs (pure; no I/O).

`oa_file_list.csv`: a header row, then `File,Article Citation,Accession ID,Last Updated,PMID,License
[,Retracted]` with citations quoted because they hold commas. `oa_file_list.txt`: a timestamp line,
then tab-separated `File, Citation, Accession ID, PMID:<digits>, License`. Both are told apart by
their content, not their name. The License column ("CC BY", "CC BY-NC-ND", "CC0", "NO-CC CODE")
becomes a class from transforms.licenses; the article reader uses it only where the XML names no
license, and `ArticleSelection` can skip articles before their XML is read.
"""
from __future__ import annotations

import csv
import dataclasses
import re
from typing import Container, Iterable, Mapping, NamedTuple

from transforms.jats import normalize_pmcid
from transforms.licenses import UNKNOWN, LicensePolicy, is_admissible, license_from_code


class FileListEntry(NamedTuple):  # a tuple: the full list has millions of rows
    license: str  # a class from transforms.licenses
    citation: str
    pmid: str
    file: str  # the package path as the list names it (oa_package/08/e0/PMC13900.tar.gz)


def _entry(file: str, citation: str, pmid: str, license_text: str) -> FileListEntry:
    pmid = re.sub(r"^\s*PMID:\s*", "", pmid or "", flags=re.IGNORECASE).strip()
    return FileListEntry(license_from_code(license_text) or UNKNOWN, (citation or "").strip(), pmid,
                         (file or "").strip())


def _column(header: list[str], *names: str) -> int | None:
    """Index of the first header cell whose letters start with one of `names` ("Accession ID")."""
    compact = [re.sub(r"[^a-z]", "", cell.lower()) for cell in header]
    for name in names:
        for index, cell in enumerate(compact):
            if cell.startswith(name):
                return index
    return None


def parse_file_list(lines: Iterable[str], keep: Container[str] | None = None) -> dict[str, FileListEntry]:
    """{PMCID: FileListEntry} from the lines of an oa_file_list .csv or .txt.

    `keep` (e.g. the `--pmcids` set) bounds memory on the full list: other rows are not stored.
    Rows without a PMCID are skipped; so is a trailing blank line.
    """
    lines = iter(lines)
    first = next(lines, "")
    if "\t" not in first and "," in first:
        rows = csv.reader(_chain(first, lines))
        header = next(rows)
        columns = [_column(header, *names) for names in (("file",), ("articlecitation", "citation"),
                                                          ("accession",), ("pmid",), ("license",))]
        if columns[2] is None:
            raise ValueError(f"file list header has no Accession ID column: {header}")
    else:
        # The .txt form: the first line is a timestamp unless it already is a row.
        rows = csv.reader(_chain(first, lines) if "\t" in first else lines, delimiter="\t",
                          quoting=csv.QUOTE_NONE)
        columns = [0, 1, 2, 3, 4]
    entries = {}
    for row in rows:
        cells = [row[index] if index is not None and index < len(row) else "" for index in columns]
        pmcid = normalize_pmcid(cells[2])
        if pmcid and (keep is None or pmcid in keep):
            entries[pmcid] = _entry(cells[0], cells[1], cells[3], cells[4])
    return entries


def _chain(first: str, rest: Iterable[str]) -> Iterable[str]:
    yield first
    yield from rest


def parse_pmcids(lines: Iterable[str]) -> frozenset[str]:
    """A `--pmcids` file: one PMCID per line ("PMC123" or "123"; the first column of a CSV/TSV line
    counts), blank lines and `#` comments allowed, an optional header line. Raises ValueError naming
    the first line that is not a PMCID."""
    found = set()
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        first = re.split(r"[,\t ]", text, maxsplit=1)[0]
        pmcid = normalize_pmcid(first)
        if pmcid:
            found.add(pmcid)
        elif not (number == 1 and first.isalpha()):  # "pmcid" / "Accession" header
            raise ValueError(f"--pmcids line {number} is not a PMCID: {text[:60]!r}")
    return frozenset(found)


@dataclasses.dataclass(frozen=True)
class ArticleSelection:
    """Which articles a run reads, decided from names alone, before any XML is read.

    pmcids: `--pmcids`; None reads every article.
    file_list: `--file-list`; its license decides where an article's XML names none.
    policy: when set, an article whose file-list license this policy rejects is skipped unread
        (the point at PMC scale: non-commercial packages are never fetched). Articles the list does
        not name are always read.
    """

    pmcids: frozenset[str] | None = None
    file_list: Mapping[str, FileListEntry] = dataclasses.field(default_factory=dict)
    policy: LicensePolicy | None = None

    def skip_reason(self, pmcid: str) -> str:
        """Why the article `pmcid` is not read; "" when it is (or when no PMCID is known yet)."""
        if not pmcid:
            return ""
        if self.pmcids is not None and pmcid not in self.pmcids:
            return "not listed in --pmcids"
        entry = self.file_list.get(pmcid)
        if self.policy is not None and entry is not None and not is_admissible(entry.license, self.policy):
            return f"file list license {entry.license} not admitted by --license {self.policy.value}"
        return ""
