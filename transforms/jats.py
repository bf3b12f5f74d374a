"""JATS article XML -> article metadata, figures, captions, inline mentions, license (pure; no I/O).

Reads every form PMC serves: legacy `.nxml` (DOCTYPE, no namespace), namespaced JATS 1.3 (PMC Cloud
Service, default namespace `https://jats.nlm.nih.gov/ns/archiving/1.3/`), and either one still inside
an OAI-PMH `GetRecord` envelope. Namespaces are dropped after parsing, so one set of element names
serves all forms.

What counts as a figure: every `<fig>` wherever it sits (`<body>`, `<floats-group>`, `<back>`,
sub-articles), except inside `<table-wrap>` / `<disp-formula>`; its image is a `<graphic>` that is a
direct child or inside a direct `<alternatives>`. Scanned pages (`content-type="scanned-page"`) and
bare `<graphic>`s outside a `<fig>` are not figures. A `<fig>` without any graphic is still a figure
(the reader rejects it as `missing_image`), so the index accounts for it.

Caption = `<title>` + every block (`<p>`, lists) of `<caption>`, each block's text taken exactly as
written (so `T<sub>4</sub> in` stays "T4 in"), whitespace collapsed, blocks joined by one space; a
block that does not end in punctuation (a title like "Strategy and validation") gets a "." so the
joined caption still reads as sentences. A `<fig-group>`'s label and caption apply to its figures:
the group caption comes first, then the figure's own.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Iterator

from lxml import etree

from transforms.licenses import UNKNOWN, license_from_code, license_from_text, license_from_url, strictest

MAX_MENTIONS = 5  # inline mentions kept per figure (first ones in document order)
MAX_MENTION_CHARS = 1000  # a longer "sentence" (no boundary found) is cut at a word boundary
MAX_DETAIL_CHARS = 200

# Never expand entities, never fetch a DTD or anything else, keep libxml2's size and amplification
# limits (huge_tree=False): an entity-expansion bomb is refused as malformed XML.
_PARSER_OPTIONS = dict(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)

# Elements whose text is never part of a caption or a mention sentence.
_SILENT = frozenset({"tex-math", "annotation", "annotation-xml"})
# Floats with their own captions: skipped inside body paragraphs (PMC puts figures inside <p>).
_FLOATS = frozenset({
    "fig", "fig-group", "table-wrap", "table-wrap-group", "supplementary-material", "media",
    "chem-struct-wrap", "graphic",
})
_NOT_FIGURE_CONTAINERS = frozenset({"table-wrap", "disp-formula"})
_SCANNED_PAGE = "scanned-page"
_PMCID_TYPES = ("pmcid", "pmc", "pmc-uid")  # preference order when several are present
_NOT_PUBLICATION_DATES = frozenset({"pmc-release", "nihms-submitted", "retracted", "corrected"})
_ENDS_A_SENTENCE = re.compile(r"[.!?:;][\"'\u201d\u2019)\]]*$")


class MalformedArticle(ValueError):
    """XML that is not a readable JATS article; the message is the index `detail`."""


@dataclasses.dataclass(frozen=True)
class Figure:
    figure_id: str  # the <fig> id attribute as written ("" when absent)
    label: str
    caption: str
    href: str  # the graphic's xlink:href as written, usually without extension ("" if none)
    mentions: tuple[str, ...]
    # The figure's own <permissions> (reprinted figures), as a class; None when it has none.
    own_license: str | None = None


@dataclasses.dataclass(frozen=True)
class Article:
    pmcid: str  # "PMC<digits>", "" when the XML names none
    pmid: str
    title: str
    journal: str
    year: str
    license: str  # a class from transforms.licenses; UNKNOWN when the XML says nothing decisive
    license_url: str
    figures: tuple[Figure, ...]


def xml_parser() -> etree.XMLParser:
    return etree.XMLParser(**_PARSER_OPTIONS)


def parse_article(xml: bytes, max_mentions: int = MAX_MENTIONS) -> Article:
    """One article's XML -> Article. Raises MalformedArticle (with a short detail) for anything else."""
    article, envelope = _find_article(xml)
    meta = article.find("front/article-meta")
    if meta is None:
        meta = etree.Element("article-meta")
    license_class, license_url = _permissions_license(meta.find("permissions"))
    return Article(
        pmcid=_pmcid(meta) or _oai_pmcid(envelope),
        pmid=_article_id(meta, "pmid"),
        title=_text(meta.find("title-group/article-title")),
        journal=_journal(article),
        year=_year(meta),
        license=license_class or UNKNOWN,
        license_url=license_url,
        figures=tuple(_figures(article, max_mentions)),
    )


def normalize_pmcid(value: str) -> str:
    """"PMC123", "pmc123", "123" -> "PMC123"; anything else -> ""."""
    match = re.fullmatch(r"\s*(?:PMC)?(\d+)\s*", value or "", re.IGNORECASE)
    return f"PMC{int(match.group(1))}" if match else ""


_SNIFF_PMCID = re.compile(
    rb"<(?:\w+:)?article-id\b[^>]*\bpub-id-type\s*=\s*[\"'](?:pmcid|pmc|pmc-uid)[\"'][^>]*>\s*(?:PMC)?(\d+)\s*<"
    rb"|oai:pubmedcentral\.nih\.gov:(\d+)",
    re.IGNORECASE,
)


def sniff_pmcid(data: bytes) -> str:
    """The PMCID of XML too broken to parse, found by pattern; "" when none is visible."""
    match = _SNIFF_PMCID.search(data or b"")
    return f"PMC{int(match.group(1) or match.group(2))}" if match else ""


# --- Parsing and namespaces --------------------------------------------------------------------


def _find_article(xml: bytes) -> tuple[etree._Element, etree._Element]:
    """(the <article>, the document root) with namespaces stripped; the root is the OAI envelope if any."""
    try:
        root = etree.fromstring(xml, xml_parser())
    except etree.XMLSyntaxError as error:
        raise MalformedArticle(short_detail(f"XML syntax error: {error}")) from None
    if root is None:
        raise MalformedArticle("empty XML document")
    _strip_namespaces(root)
    article = root if root.tag == "article" else next(root.iter("article"), None)
    if article is None:
        oai_error = next(root.iter("error"), None)
        if oai_error is not None:
            raise MalformedArticle(short_detail(f"OAI-PMH error {oai_error.get('code', '')}: {_text(oai_error)}"))
        raise MalformedArticle(f"no <article> element (root is <{root.tag}>)")
    return article, root


def _strip_namespaces(root: etree._Element) -> None:
    for element in root.iter(tag=etree.Element):
        if element.tag.startswith("{"):
            element.tag = element.tag.partition("}")[2]
        for name in [name for name in element.attrib.keys() if name.startswith("{")]:
            element.attrib[name.partition("}")[2]] = element.attrib.pop(name)
    etree.cleanup_namespaces(root)


def short_detail(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "\u2026"


# --- Text ----------------------------------------------------------------------------------------


class _TextBuilder:
    """Concatenates text as written and remembers where each cross-reference starts."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.xrefs: list[tuple[int, str]] = []  # (offset, rid attribute)

    def add(self, text: str | None) -> None:
        if text:
            self.parts.append(text)
            self.length += len(text)

    def text(self) -> str:
        return "".join(self.parts)


def _render(element: etree._Element, out: _TextBuilder, skip: frozenset = _SILENT) -> None:
    """Text of `element` and its descendants, tails included, exactly as written (no spaces added)."""
    if element.tag == "xref" and element.get("rid"):
        out.xrefs.append((out.length, element.get("rid")))
    out.add(element.text)
    for child in element:
        # Comments, processing instructions and unexpanded entities have no text of their own.
        if isinstance(child.tag, str) and child.tag not in skip:
            _render(child, out, skip)
        out.add(child.tail)


def _text(element: etree._Element | None) -> str:
    if element is None:
        return ""
    out = _TextBuilder()
    _render(element, out)
    return " ".join(out.text().split())


def _join_blocks(blocks: Iterable[str]) -> str:
    blocks = [block for block in blocks if block]
    return " ".join(
        block if index == len(blocks) - 1 or _ENDS_A_SENTENCE.search(block) else block + "."
        for index, block in enumerate(blocks)
    )


def _caption_blocks(caption: etree._Element | None) -> list[str]:
    if caption is None:
        return []
    blocks = [" ".join((caption.text or "").split())]
    for child in caption:
        if isinstance(child.tag, str):
            blocks.append(_text(child))
        blocks.append(" ".join((child.tail or "").split()))
    return [block for block in blocks if block]


# --- Metadata ------------------------------------------------------------------------------------


def _article_id(meta: etree._Element, id_type: str) -> str:
    for element in meta.findall("article-id"):
        if element.get("pub-id-type") == id_type and _text(element):
            return _text(element)
    return ""


def _pmcid(meta: etree._Element) -> str:
    for id_type in _PMCID_TYPES:
        pmcid = normalize_pmcid(_article_id(meta, id_type))
        if pmcid:
            return pmcid
    return ""


def _oai_pmcid(envelope: etree._Element) -> str:
    identifier = _text(next(envelope.iter("identifier"), None))
    return normalize_pmcid(identifier.rpartition(":")[2]) if identifier.startswith("oai:") else ""


def _journal(article: etree._Element) -> str:
    journal_meta = article.find("front/journal-meta")
    if journal_meta is None:
        return ""
    title = _text(next(journal_meta.iter("journal-title"), None))
    if title:
        return title
    for journal_id in journal_meta.findall("journal-id"):
        if journal_id.get("journal-id-type") == "nlm-ta":
            return _text(journal_id)
    return ""


def _year(meta: etree._Element) -> str:
    """The earliest publication year (epub, ppub, collection, JATS 1.3 date-type="pub")."""
    years = [
        _text(date.find("year"))
        for date in meta.findall("pub-date")
        if (date.get("pub-type") or date.get("date-type") or "") not in _NOT_PUBLICATION_DATES
    ]
    years = [year for year in years if re.fullmatch(r"\d{4}", year)]
    return min(years, default="")


# --- License ---------------------------------------------------------------------------------------


def _license_element_class(license_element: etree._Element) -> tuple[str | None, str]:
    """(class or None, URL) of one <license>: its URL first, then its license-type code, then prose."""
    urls = [license_element.get("href", "")]
    urls += [_text(ref) for ref in license_element.iter("license_ref")]
    urls += [link.get("href", "") for link in license_element.iter("ext-link", "uri")]
    urls = [url for url in urls if url]
    by_url = [(license_from_url(url), url) for url in urls]
    by_url = [(license_class, url) for license_class, url in by_url if license_class]
    if by_url:
        license_class = strictest(license_class for license_class, _ in by_url)
        return license_class, next(url for cls, url in by_url if cls == license_class)
    first_url = urls[0] if urls else ""
    codes = [license_element.get("license-type", "")]
    codes += [ref.get("content-type", "") for ref in license_element.iter("license_ref")]
    by_code = [license_class for license_class in map(license_from_code, codes) if license_class]
    if by_code:
        return strictest(by_code), first_url
    return license_from_text(_text(license_element)), first_url


def _permissions_license(permissions: etree._Element | None) -> tuple[str | None, str]:
    """(class or None, URL) from a <permissions>: every <license> (the strictest wins), else the
    <copyright-statement> prose; None when neither names a license."""
    if permissions is None:
        return None, ""
    found = [_license_element_class(element) for element in permissions.findall("license")]
    decided = [(license_class, url) for license_class, url in found if license_class]
    if decided:
        license_class = strictest(license_class for license_class, _ in decided)
        return license_class, next(url for cls, url in decided if cls == license_class)
    statement = " ".join(_text(element) for element in permissions.findall("copyright-statement"))
    return license_from_text(statement), next((url for _, url in found if url), "")


# --- Figures ---------------------------------------------------------------------------------------


def _graphic_href(fig: etree._Element) -> str | None:
    """The href of the fig's first non-scanned-page graphic; "" if it has none; None if it only has
    scanned pages (then it is not a figure)."""
    graphics = []
    for child in fig:
        if child.tag == "graphic":
            graphics.append(child)
        elif child.tag == "alternatives":
            graphics.extend(element for element in child if element.tag == "graphic")
    if not graphics:
        return ""
    real = [graphic for graphic in graphics if graphic.get("content-type") != _SCANNED_PAGE]
    return real[0].get("href", "").strip() if real else None


def _figure_license(permissions: etree._Element | None) -> str | None:
    """A figure's own <permissions> (a reprint) as a class: what it cannot name is UNKNOWN."""
    if permissions is None:
        return None
    return _permissions_license(permissions)[0] or UNKNOWN


def _fig_group(fig: etree._Element) -> etree._Element:
    """The <fig-group> around `fig`, or an empty element (no label, no caption) when there is none."""
    parent = fig.getparent()
    return parent if parent is not None and parent.tag == "fig-group" else etree.Element("fig-group")


def _is_figure(fig: etree._Element) -> bool:
    return not any(ancestor.tag in _NOT_FIGURE_CONTAINERS for ancestor in fig.iterancestors())


def _figures(article: etree._Element, max_mentions: int) -> Iterator[Figure]:
    figs = []
    for fig in article.iter("fig"):
        href = _graphic_href(fig) if _is_figure(fig) else None
        if href is not None:
            figs.append((fig, href))
    mentions = _mentions(article, [fig for fig, _ in figs], max_mentions)
    for index, (fig, href) in enumerate(figs):
        group = _fig_group(fig)
        label = _text(fig.find("label")) or _text(group.find("label"))
        blocks = _caption_blocks(group.find("caption")) + _caption_blocks(fig.find("caption"))
        yield Figure(
            figure_id=fig.get("id", ""),
            label=label,
            caption=_join_blocks(blocks),
            href=href,
            mentions=mentions[index],
            own_license=_figure_license(fig.find("permissions")),
        )


# --- Inline mentions -------------------------------------------------------------------------------

# Words whose trailing period does not end a sentence ("Fig. 2", "et al. (2019)", "e.g. CT").
_ABBREVIATIONS = frozenset({
    "fig", "figs", "al", "e.g", "i.e", "vs", "cf", "ca", "approx", "ref", "refs", "eq", "eqs", "no", "nos",
    "suppl", "dr", "resp", "sp", "spp", "var", "st",
})
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s+[\"'\u201c(\[]?[A-Z0-9])")
_LAST_WORD = re.compile(r"([A-Za-z][A-Za-z.]*)$")
_LONGEST_WORD = 12  # looking further back than the longest abbreviation only costs time


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence: a boundary is terminal punctuation followed by space and a
    capital or digit, unless the word before it is a known abbreviation."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        word = _LAST_WORD.search(text, max(0, match.start() - _LONGEST_WORD), match.start())
        if word and word.group(1).lower().rstrip(".") in _ABBREVIATIONS:
            continue
        spans.append((start, match.end()))
        start = match.end()
    spans.append((start, len(text)))
    return [(begin, end) for begin, end in spans if text[begin:end].strip()]


def _text_paragraphs(element: etree._Element) -> Iterator[etree._Element]:
    """Outermost <p>s below `element`, not descending into floats (their captions are not body text)."""
    for child in element:
        if not isinstance(child.tag, str) or child.tag in _FLOATS:
            continue
        if child.tag == "p":
            yield child
        else:
            yield from _text_paragraphs(child)


def _cut(sentence: str) -> str:
    if len(sentence) <= MAX_MENTION_CHARS:
        return sentence
    return sentence[: MAX_MENTION_CHARS].rsplit(" ", 1)[0] + "\u2026"


def _mentions(article: etree._Element, figs: list[etree._Element], max_mentions: int) -> list[tuple[str, ...]]:
    """For each fig, the body sentences that cite it through <xref rid> (rid may list several ids and
    may name a <fig-group>), deduplicated, in document order, at most `max_mentions`."""
    targets: dict[str, list[int]] = {}
    for index, fig in enumerate(figs):
        targets.setdefault(fig.get("id", ""), []).append(index)
        targets.setdefault(_fig_group(fig).get("id", ""), []).append(index)
    targets.pop("", None)
    found: list[dict[str, None]] = [{} for _ in figs]  # dict as an insertion-ordered set
    if not targets:
        return [()] * len(figs)
    for section in (article.find("body"), article.find("back")):
        if section is None:
            continue
        for paragraph in _text_paragraphs(section):
            out = _TextBuilder()
            _render(paragraph, out, _SILENT | _FLOATS)
            if not out.xrefs:
                continue
            text = out.text()
            for start, end in sentence_spans(text):
                cited = {index for offset, rid in out.xrefs if start <= offset < end
                         for token in rid.split() for index in targets.get(token, ())}
                sentence = _cut(" ".join(text[start:end].split()))
                for index in sorted(cited):
                    if len(found[index]) < max_mentions:
                        found[index].setdefault(sentence)
    return [tuple(sentences) for sentences in found]
