"""PMC Open Access article inputs -> figure Records (pure apart from reading through `FileAccess`).

One call of `read_article_input(path)` reads one `--input` path:
- `*.tar.gz` / `*.tgz` package (PMC's legacy OA packages): read as one gzip stream, member by member
  (`tarfile` mode "r|gz"); nothing is extracted; only regular-file members with relative names and
  no `..` are looked at, so symlinks, hard links, devices and path tricks never touch anything.
  The `.nxml` (else `.xml`) members are the articles; the media members are kept in memory.
- a directory (PMC Cloud Service form): every `.nxml` (else `.xml`) in it, media beside them.
- a bare `.xml` / `.nxml` file: media in the same directory.

A graphic's `xlink:href` usually has no extension; it resolves to the full-size media file, trying
.jpg, .jpeg, .png, .tif, .tiff in that order, never the small `.gif` thumbnail packages carry.

It yields, in document order:
- `Record` per figure with its image bytes;
- `IndexRow` (rejected) per figure that cannot become a record: no image (`image/missing_image`),
  no caption (`ingest/empty_caption`: graphical abstracts and bare images have nothing to align);
  one per unreadable article (`ingest/malformed_xml`) or package (`ingest/unreadable_package`),
  its id the PMCID when one can be seen, else the input's file name;
- `ArticleSummary` per article read or skipped, so the caller can count articles without figures
  and articles skipped by `ArticleSelection` (the Beam ingest turns them into report counters).
"""
from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import tarfile
import zlib
from typing import BinaryIO, Callable, Iterable, Iterator

from schemas import IndexRow, Reason, Record, Source, Stage
from transforms.filelist import ArticleSelection
from transforms.jats import (
    Figure, MalformedArticle, normalize_pmcid, parse_article, short_detail, sniff_pmcid,
)
from transforms.licenses import UNKNOWN, strictest

PACKAGE_SUFFIXES = (".tar.gz", ".tgz")
XML_SUFFIXES = (".nxml", ".xml")  # .nxml first: a package's .xml members may be supplementary data
FULL_SIZE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")  # preference order
THUMBNAIL_SUFFIX = ".gif"
MAX_XML_BYTES = 64 << 20  # the largest PMC article XML is a few MB
MAX_MEDIA_BYTES = 256 << 20  # a member above this is not buffered (the figure gets image_too_large)


@dataclasses.dataclass(frozen=True)
class FileAccess:
    """How the reader touches storage; local files by default, Beam's FileSystems in the pipeline."""

    open: Callable[[str], BinaryIO]
    exists: Callable[[str], bool]
    list_dir: Callable[[str], list[str]]  # full paths of the files directly inside a directory
    is_dir: Callable[[str], bool]


def _local_list_dir(path: str) -> list[str]:
    return sorted(os.path.join(path, name) for name in os.listdir(path))


LOCAL_FILES = FileAccess(
    open=lambda path: open(path, "rb"), exists=os.path.isfile, list_dir=_local_list_dir, is_dir=os.path.isdir,
)


@dataclasses.dataclass(frozen=True)
class ArticleSummary:
    """One article seen by the reader: how many figures it has, or why it was skipped unread."""

    source_file: str
    pmcid: str
    figures: int = 0
    skipped: str = ""


Output = Record | IndexRow | ArticleSummary


def is_article_input(path: str) -> bool:
    """Whether `path` names an article input by its name (directories are recognized by the caller)."""
    return path.lower().endswith(PACKAGE_SUFFIXES + XML_SUFFIXES)


def pmcid_from_name(name: str) -> str:
    """"PMC13900.tar.gz", "PMC10777901.1.xml" -> the PMCID in the name; "" when it names none."""
    match = re.search(r"(?<![A-Za-z0-9])PMC(\d+)", name, re.IGNORECASE)
    return normalize_pmcid(match.group(1)) if match else ""


def read_article_input(
    path: str, files: FileAccess = LOCAL_FILES, selection: ArticleSelection = ArticleSelection(),
) -> Iterator[Output]:
    """Everything one `--input` path holds, as Records, rejected IndexRows and ArticleSummaries."""
    name = posixpath.basename(path.rstrip("/"))
    skip = selection.skip_reason(pmcid_from_name(name))
    if skip:
        yield ArticleSummary(name, pmcid_from_name(name), skipped=skip)
    elif path.lower().endswith(PACKAGE_SUFFIXES):
        yield from _read_package(path, name, files, selection)
    elif files.is_dir(path):
        yield from _read_directory(path, files, selection)
    else:
        yield from _read_xml_file(path, files, selection)


# --- Inputs ------------------------------------------------------------------------------------------


def _read_package(path: str, name: str, files: FileAccess, selection: ArticleSelection) -> Iterator[Output]:
    try:
        package = _read_members(files.open, path)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        yield _input_rejected(pmcid_from_name(name), name, Reason.UNREADABLE_PACKAGE,
                              f"cannot read package: {type(error).__name__}: {error}")
        return
    if not package.articles:
        yield _input_rejected(pmcid_from_name(name), name, Reason.UNREADABLE_PACKAGE,
                              "no .nxml or .xml article in the package")
        return
    for member, xml in package.articles.items():
        yield from _read_article(xml, name, member, selection, _PackageMedia(posixpath.dirname(member), package))


@dataclasses.dataclass
class _Package:
    articles: dict[str, bytes] = dataclasses.field(default_factory=dict)  # member name -> XML
    images: dict[str, bytes] = dataclasses.field(default_factory=dict)  # full-size media
    oversize: dict[str, int] = dataclasses.field(default_factory=dict)  # media too large to buffer: size
    thumbnails: set[str] = dataclasses.field(default_factory=set)  # names only: never used as images


def _read_members(open_file: Callable[[str], BinaryIO], path: str) -> _Package:
    """The package's articles and media in one streaming pass over the gzip stream."""
    package, xml = _Package(), {suffix: {} for suffix in XML_SUFFIXES}
    with open_file(path) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
        for member in tar:
            name = _safe_member_name(member)
            if not name:
                continue
            suffix = _suffix(name)
            if suffix in XML_SUFFIXES and member.size <= MAX_XML_BYTES:
                xml[suffix][name] = tar.extractfile(member).read()
            elif suffix in FULL_SIZE_SUFFIXES and member.size > MAX_MEDIA_BYTES:
                package.oversize[name] = member.size
            elif suffix in FULL_SIZE_SUFFIXES:
                package.images[name] = tar.extractfile(member).read()
            elif suffix == THUMBNAIL_SUFFIX:
                package.thumbnails.add(name)
    package.articles = dict(sorted((xml[".nxml"] or xml[".xml"]).items()))
    return package


def _safe_member_name(member: tarfile.TarInfo) -> str:
    """The member's relative POSIX name, or "" for anything that is not a plain, contained file."""
    if not member.isfile():
        return ""
    name = member.name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    parts = name.split("/")
    if not name or name.startswith("/") or ".." in parts or re.match(r"^[A-Za-z]:", name):
        return ""
    return name


def _suffix(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def _xml_names(names: Iterable[str]) -> list[str]:
    names = sorted(names)
    for suffix in XML_SUFFIXES:
        chosen = [name for name in names if _suffix(name) == suffix]
        if chosen:
            return chosen
    return []


def _read_directory(path: str, files: FileAccess, selection: ArticleSelection) -> Iterator[Output]:
    directory = path.rstrip("/")
    try:
        xml_paths = _xml_names(files.list_dir(directory))
    except OSError as error:
        yield _input_rejected(pmcid_from_name(directory), posixpath.basename(directory),
                              Reason.UNREADABLE_PACKAGE, f"cannot list directory: {error}")
        return
    if not xml_paths:
        yield _input_rejected(pmcid_from_name(directory), posixpath.basename(directory),
                              Reason.UNREADABLE_PACKAGE, "no .nxml or .xml article in the directory")
        return
    for xml_path in xml_paths:
        yield from _read_xml_file(xml_path, files, selection)


def _read_xml_file(path: str, files: FileAccess, selection: ArticleSelection) -> Iterator[Output]:
    name = posixpath.basename(path)
    try:
        with files.open(path) as handle:
            xml = handle.read(MAX_XML_BYTES + 1)
    except OSError as error:
        yield _input_rejected(pmcid_from_name(name), name, Reason.UNREADABLE_PACKAGE, f"cannot read: {error}")
        return
    if len(xml) > MAX_XML_BYTES:
        yield _input_rejected(pmcid_from_name(name), name, Reason.MALFORMED_XML,
                              f"XML larger than {MAX_XML_BYTES} bytes")
        return
    yield from _read_article(xml, name, name, selection, _SiblingMedia(posixpath.dirname(path), files))


# --- Media resolution -------------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


def media_candidates(href: str) -> list[str]:
    """Names a graphic href may be stored under, best first: the full-size formats only.

    "fig1" -> fig1.jpg, fig1.jpeg, ...; "fig1.tif" -> fig1.tif first; "fig1.gif" -> the full-size
    siblings of the thumbnail; "pone.0046493.g001" keeps its dots (".g001" is not a format).
    """
    stem, suffix = posixpath.splitext(href)
    if suffix.lower() in FULL_SIZE_SUFFIXES:
        return [href] + [stem + other for other in FULL_SIZE_SUFFIXES if other != suffix.lower()]
    base = stem if suffix.lower() == THUMBNAIL_SUFFIX else href
    return [base + suffix for suffix in FULL_SIZE_SUFFIXES]


class _PackageMedia:
    """A figure's media among a package's members: beside the article (case-insensitive), else the
    one member anywhere in the package with that file name."""

    def __init__(self, article_dir: str, package: _Package) -> None:
        self.article_dir = article_dir
        self.package = package
        names = sorted([*package.images, *package.oversize, *package.thumbnails])
        self.by_path = {name.lower(): name for name in names}
        self.by_basename: dict[str, list[str]] = {}
        for name in names:
            self.by_basename.setdefault(posixpath.basename(name).lower(), []).append(name)

    def find(self, candidate: str) -> str:
        path = posixpath.normpath(posixpath.join(self.article_dir, candidate)).lower()
        if path in self.by_path:
            return self.by_path[path]
        elsewhere = self.by_basename.get(posixpath.basename(candidate).lower(), [])
        return elsewhere[0] if len(elsewhere) == 1 else ""

    def load(self, name: str) -> bytes:
        if name in self.package.oversize:
            raise _TooLarge(f"{name} is {self.package.oversize[name]} bytes, over the {MAX_MEDIA_BYTES} read limit")
        return self.package.images[name]


class _SiblingMedia:
    """A figure's media beside its XML file, found by asking whether each candidate name exists."""

    def __init__(self, directory: str, files: FileAccess) -> None:
        self.directory = directory
        self.files = files

    def find(self, candidate: str) -> str:
        if candidate.startswith("/") or ".." in candidate.split("/") or "://" in candidate:
            return ""  # an href never leaves the article's directory
        return candidate if self.files.exists(posixpath.join(self.directory, candidate)) else ""

    def load(self, name: str) -> bytes:
        with self.files.open(posixpath.join(self.directory, name)) as handle:
            return handle.read()


def _resolve(href: str, media: _PackageMedia | _SiblingMedia) -> tuple[str, str]:
    """(media name, "") or ("", why not)."""
    if not href:
        return "", "figure has no <graphic>"
    for candidate in media_candidates(href):
        found = media.find(candidate)
        if found:
            return found, ""
    stem = posixpath.splitext(href)[0] if _suffix(href) in FULL_SIZE_SUFFIXES + (THUMBNAIL_SUFFIX,) else href
    if media.find(stem + THUMBNAIL_SUFFIX):
        return "", f"only the .gif thumbnail of graphic {href!r} is present; no full-size image"
    return "", f"no image file for graphic {href!r} (tried {'/'.join(FULL_SIZE_SUFFIXES)})"


# --- Records -----------------------------------------------------------------------------------------


def _input_rejected(pmcid: str, source_file: str, reason: Reason, detail: str) -> IndexRow:
    record = Record(id=pmcid or source_file, source_file=source_file, source=Source(pmcid=pmcid))
    return IndexRow.rejected(record, Stage.INGEST, reason, short_detail(detail))


def _read_article(
    xml: bytes, source_file: str, xml_name: str, selection: ArticleSelection, media: _PackageMedia | _SiblingMedia,
) -> Iterator[Output]:
    try:
        article = parse_article(xml)
    except MalformedArticle as error:
        pmcid = sniff_pmcid(xml) or pmcid_from_name(xml_name) or pmcid_from_name(source_file)
        yield _input_rejected(pmcid, source_file, Reason.MALFORMED_XML, str(error))
        return
    pmcid = article.pmcid or pmcid_from_name(xml_name) or pmcid_from_name(source_file)
    skip = selection.skip_reason(pmcid)
    if skip:
        yield ArticleSummary(source_file, pmcid, len(article.figures), skip)
        return
    listed = selection.file_list.get(pmcid)
    base = _Base(
        id_prefix=pmcid or posixpath.splitext(posixpath.basename(xml_name))[0],
        source=Source(
            pmcid=pmcid, pmid=article.pmid or (listed.pmid if listed else ""),
            license=article.license if article.license != UNKNOWN or not listed else listed.license,
            license_url=article.license_url, title=article.title, journal=article.journal, year=article.year,
        ),
        source_file=source_file,
    )
    used_ids: set[str] = set()
    for number, figure in enumerate(article.figures, start=1):
        record = _figure_record(base, figure, number, used_ids)
        yield _with_image(record, figure, media)
    yield ArticleSummary(source_file, pmcid, len(article.figures))


@dataclasses.dataclass(frozen=True)
class _Base:
    """What every figure of one article shares."""

    id_prefix: str
    source: Source
    source_file: str


def _figure_record(base: _Base, figure: Figure, number: int, used_ids: set[str]) -> Record:
    """The figure's record (no image yet). Ids: `PMC<digits>_<fig id>`; a fig without an id is
    `fig<n>` (n its 1-based position); a repeated id gets `-2`, `-3`... so ids stay unique."""
    record_id = f"{base.id_prefix}_{figure.figure_id or f'fig{number}'}"
    unique, copy = record_id, 1
    while unique in used_ids:
        copy += 1
        unique = f"{record_id}-{copy}"
    used_ids.add(unique)
    license_class = base.source.license
    if figure.own_license is not None:  # a reprinted figure cannot be freer than its article
        license_class = strictest([license_class, figure.own_license])
    return Record(
        id=unique,
        caption=figure.caption,
        label=figure.label,
        inline_mentions_en=list(figure.mentions),
        source=dataclasses.replace(base.source, figure_id=figure.figure_id, image=figure.href,
                                   license=license_class),
        source_file=base.source_file,
    )


def _with_image(record: Record, figure: Figure, media: _PackageMedia | _SiblingMedia) -> Record | IndexRow:
    if not figure.caption:
        what = "a label but no caption" if figure.label else "neither label nor caption (graphical abstract)"
        return IndexRow.rejected(record, Stage.INGEST, Reason.EMPTY_CAPTION, f"figure has {what}")
    name, why_not = _resolve(figure.href, media)
    if not name:
        return IndexRow.rejected(record, Stage.IMAGE, Reason.MISSING_IMAGE, why_not)
    record.source.image = name
    try:
        record.image_bytes = media.load(name)
    except _TooLarge as error:
        return IndexRow.rejected(record, Stage.IMAGE, Reason.IMAGE_TOO_LARGE, str(error))
    except OSError as error:
        return IndexRow.rejected(record, Stage.IMAGE, Reason.MISSING_IMAGE, f"cannot read {name}: {error}")
    if not record.image_bytes:
        return IndexRow.rejected(record, Stage.IMAGE, Reason.EMPTY_IMAGE, f"{name} is empty")
    return record
