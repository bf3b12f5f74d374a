"""Offline stage-2 QA: short Chinese question/answer pairs grounded in what a caption states.

No endpoint needed (the demo uses it): an EN+ZH lexicon (`data/qa_lexicon.json`) finds the
modality, anatomy, view, MRI sequence, contrast phase, stain, findings, magnification and scale bar
a caption names — English phrases by word-boundary match, Chinese terms as jieba tokens — and fixed
templates turn each fact into one QA pair whose answer is the lexicon's Chinese name for it (or a
clause copied verbatim from the Chinese caption). Nothing is asked that the caption does not
answer; negated findings ("no pleural effusion") become 未见 answers, hedged ones ("suspected")
are left out. The same caption and record id always give the same pairs.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import re
import unicodedata
from pathlib import Path

import jieba

from transforms.qa_pairs import QaPair

LEXICON_PATH = Path(__file__).resolve().parent / "data" / "qa_lexicon.json"
MAX_PAIRS = 5  # the same bound the LLM generator's schema sets

MODALITY = "modality"
ANATOMY = "anatomy"
VIEW = "view"
SEQUENCE = "sequence"
CONTRAST = "contrast"
STAIN = "stain"
FINDING = "finding"
CATEGORIES = (MODALITY, ANATOMY, VIEW, SEQUENCE, CONTRAST, STAIN, FINDING)

# Modality kinds (lexicon field `kind`). A chart or diagram is what the figure *is* even when its
# caption names the modalities it summarizes ("Scatter matrix of the PET/CT and DCE-MRI metrics").
FIGURE = "figure"
RADIOLOGY = "radiology"
PATHOLOGY = "pathology"
MICROSCOPY = "microscopy"
_MAGNIFIED_KINDS = {PATHOLOGY, MICROSCOPY}
_NOUN_BY_KIND = {RADIOLOGY: "影像", PATHOLOGY: "切片", MICROSCOPY: "显微图像", FIGURE: "图", "photo": "照片"}


@dataclasses.dataclass(frozen=True)
class Term:
    """One lexicon entry found in a caption."""

    category: str
    id: str
    name: str  # Chinese answer noun
    kind: str = ""  # modality kind
    implies: str = ""  # stains: the modality id they imply
    weak: bool = False  # a modality cue ("error bars") that decides only when nothing else is named


@dataclasses.dataclass(frozen=True)
class CaptionFacts:
    """What a caption states, each list in order of first mention, without repeats."""

    primary_modality: Term | None = None  # what the figure is: drives the question wording
    modalities: tuple[Term, ...] = ()  # the primary and the modalities named in the same sentence
    anatomy: tuple[Term, ...] = ()
    views: tuple[Term, ...] = ()
    sequences: tuple[Term, ...] = ()
    contrast: tuple[Term, ...] = ()
    stains: tuple[Term, ...] = ()
    findings: tuple[Term, ...] = ()
    absent_findings: tuple[Term, ...] = ()  # stated as absent: "no pleural effusion", "未见胸腔积液"
    magnifications: tuple[str, ...] = ()  # "×100"
    scale_bar: str = ""  # "200 μm"
    stated: tuple[str, str] = ("", "")  # (verb, clause) from the Chinese caption: ("显示", "双肺实变")
    title_zh: str = ""  # the Chinese caption's first sentence, when at most 120 characters


# --- the lexicon -------------------------------------------------------------------------------


def fold_en(text: str) -> str:
    """Case- and punctuation-folded text for phrase matching: "PET-CT" and "PET/CT" -> "pet ct"."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[\-‐‑–—/_]", " ", text)
    text = re.sub(r"\s*&\s*", "&", text)  # "H & E" == "H&E"
    text = re.sub(r"\s*±\s*", " ± ", text)
    return " ".join(text.split())


@dataclasses.dataclass(frozen=True)
class _CategoryMatcher:
    pattern: re.Pattern
    by_phrase: dict  # folded English phrase -> Term
    by_zh: dict  # lower-cased Chinese term -> Term


@dataclasses.dataclass(frozen=True)
class Lexicon:
    matchers: dict  # category -> _CategoryMatcher
    ignore: re.Pattern
    generic_modality: dict  # modality id -> its first (generic) Term
    subsumes: dict  # modality id -> ids it makes redundant
    tokenizer: jieba.Tokenizer


def _phrase_pattern(phrases) -> re.Pattern:
    """Longest phrase first; the boundaries keep "ct" out of "acting" and "he" out of "the".

    A plural ending is accepted except after short acronyms: "MRS" is a culture medium, not MRIs.
    """
    def alternation(selected) -> str:
        return "|".join(re.escape(p) for p in sorted(selected, key=lambda p: (-len(p), p))) or "(?!)"

    longer = alternation(p for p in phrases if len(p) > 3)
    short = alternation(p for p in phrases if len(p) <= 3)
    return re.compile(rf"(?<![a-z0-9&])(?:({longer})(?:e?s)?|({short}))(?![a-z0-9&])")


@functools.lru_cache(maxsize=None)
def load_lexicon(path: str = str(LEXICON_PATH)) -> Lexicon:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    # A private tokenizer: adding the lexicon's words must not change how jieba counts tokens elsewhere.
    jieba.setLogLevel(logging.WARNING)  # it logs dictionary loading at DEBUG through its own handler
    tokenizer = jieba.Tokenizer()
    matchers, generic = {}, {}
    for category in CATEGORIES:
        by_phrase, by_zh = {}, {}
        for entry in data[category]:
            term = Term(category, entry["id"], entry["name"], entry.get("kind", ""), entry.get("modality", ""),
                        entry.get("weak", False))
            if category == MODALITY:
                generic.setdefault(term.id, term)
            for phrase in entry["en"]:
                folded = fold_en(phrase)
                if by_phrase.setdefault(folded, term) != term:
                    raise ValueError(f"lexicon {category}: phrase {phrase!r} listed twice")
            for word in [*entry["zh"], entry["name"]]:  # the name too: an answer must read back as its concept
                by_zh.setdefault(word.lower(), term)
                tokenizer.add_word(word, freq=1_000_000)
        matchers[category] = _CategoryMatcher(_phrase_pattern(by_phrase), by_phrase, by_zh)
    ignore = _phrase_pattern([fold_en(p) for p in data["ignore"]])
    subsumes = {key: frozenset(ids) for key, ids in data["subsumes"].items()}
    return Lexicon(matchers, ignore, generic, subsumes, tokenizer)


# --- detection -----------------------------------------------------------------------------------

POSITIVE, ABSENT, HEDGED = "positive", "absent", "hedged"

# "no [signs of] X", "without [any areas of] X", "absence of X" ... directly before the finding.
_EN_NEGATION_BEFORE = re.compile(
    r"\b(?:no|without|absence of|absent|negative for|free of|nor)"
    r"(?: (?:signs?|evidence|areas?|any|obvious|significant|definite|apparent|visible|residual|new|of|the|a|an))*$"
)
_EN_NEGATION_AFTER = re.compile(r"^(?: \w+)?(?: was| were| is| are)? (?:not (?:seen|found|observed|detected|present)|absent)\b")
_EN_HEDGE_OR_NEGATION = re.compile(
    r"\b(?:no|not|without|absence|absent|negative|free of|rule out|ruled out|suspected|suspicious|possible|"
    r"possibly|probable|probably|likely|may|might|could|versus|vs|differential|suggestive|exclude|excluded)\b"
)
_EN_LIST_JOINER = re.compile(r"^(?:,? (?:or|nor|and)|,) $")
_ZH_NEGATION_BEFORE = re.compile(r"(?:未见明显|未见|无明显|未发现|没有|排除|不伴|无|未)$")
_ZH_HEDGE = re.compile(r"可疑|疑似|可能|考虑|不除外|待排")
_CLAUSE_END = re.compile(r"[.;:!?。；：！？]")
_SENTENCE_END = re.compile(r"[.!?。！？](?:\s|$)|[。！？]")

_MAGNIFICATION = re.compile(r"(?:(?<=[\s(\[,;:（，；：])|^)(?:[×]\s?|[xX]\s?(?=\d))(\d{1,4})(?![\d.,]\d|\s?(?:cm|mm|μm|um|nm|m)\b)")
_LENGTH_UNIT_BEFORE = re.compile(r"(?:\d|cm|mm|μm|um|nm|m)\s*$")
_SCALE_BAR = re.compile(
    r"(?:scale bars?|比例尺)\s*(?:[=:：,，]|represents?|indicates?|denotes?|is|are|为|代表)?\s*(\d+(?:\.\d+)?)\s*(μm|um|mm|cm|nm)",
    re.IGNORECASE,
)
# Whole clauses only (up to the clause's end), never cut mid-way.
_ZH_STATED = re.compile(r"(显示出|显示|可见|提示|表现为|揭示)[：:，,]?([^。；;！!？?\n]{4,120})(?=[。；;！!？?\n]|$)")
_TRAILING_ASIDE = re.compile(r"\s*[（(][^（）()]*[）)]\s*$")
_ZH_SENTENCE = re.compile(r"^[^。；;！!？?\n]{4,120}(?=[。；;！!？?\n]|$)")


def _en_polarity(folded: str, start: int, end: int, previous_absent_end: int) -> str:
    clause_start = max((m.end() for m in _CLAUSE_END.finditer(folded, 0, start)), default=0)
    before = folded[clause_start:start].rstrip()
    if _EN_NEGATION_BEFORE.search(before) or _EN_NEGATION_AFTER.search(folded[end:end + 40]):
        return ABSENT
    if previous_absent_end >= 0 and _EN_LIST_JOINER.match(folded[previous_absent_end:start]):
        return ABSENT  # "without hemorrhage or necrosis"
    window = " ".join(before.split()[-6:])
    return HEDGED if _EN_HEDGE_OR_NEGATION.search(window) else POSITIVE


def _zh_polarity(text: str, start: int) -> str:
    before = text[max(0, start - 8):start]
    before = _CLAUSE_END.split(before)[-1]
    if _ZH_NEGATION_BEFORE.search(before):
        return ABSENT
    return HEDGED if _ZH_HEDGE.search(before) else POSITIVE


def _en_matches(lexicon: Lexicon, category: str, folded: str) -> list[tuple[int, int, Term]]:
    ignored = [m.span() for m in lexicon.ignore.finditer(folded)]
    matcher = lexicon.matchers[category]
    found = []
    for m in matcher.pattern.finditer(folded):
        if any(s < m.end() and m.start() < e for s, e in ignored):
            continue
        found.append((m.start(), m.end(), matcher.by_phrase[m.group(1) or m.group(2)]))
    return found


_HAN = re.compile(r"[\u3400-\u9fff]")


def _zh_matches(lexicon: Lexicon, category: str, text: str) -> list[tuple[int, int, Term]]:
    if not _HAN.search(text):
        return []  # every Chinese term has a Han character; jieba need not read English
    by_zh = lexicon.matchers[category].by_zh
    return [
        (start, end, by_zh[word.lower()])
        for word, start, end in lexicon.tokenizer.tokenize(text, HMM=False)
        if word.lower() in by_zh
    ]


def _distinct(terms) -> tuple[Term, ...]:
    seen, out = set(), []
    for term in terms:
        if term.name not in seen:
            seen.add(term.name)
            out.append(term)
    return tuple(out)


def _findings(lexicon: Lexicon, folded_en: str, zh: str) -> tuple[list[Term], list[Term]]:
    positive, absent = [], []
    previous_absent_end = -1
    for start, end, term in _en_matches(lexicon, FINDING, folded_en):
        polarity = _en_polarity(folded_en, start, end, previous_absent_end)
        previous_absent_end = end if polarity == ABSENT else -1
        {POSITIVE: positive, ABSENT: absent}.get(polarity, []).append(term)
    for start, _, term in _zh_matches(lexicon, FINDING, zh):
        {POSITIVE: positive, ABSENT: absent}.get(_zh_polarity(zh, start), []).append(term)
    absent_names = {t.name for t in absent}
    # A finding both stated and denied (different lesions, different panels) is asked about neither way.
    both = absent_names & {t.name for t in positive}
    return [t for t in positive if t.name not in both], [t for t in absent if t.name not in both]


def _magnifications(text: str) -> tuple[str, ...]:
    found = []
    for m in _MAGNIFICATION.finditer(text):
        if _LENGTH_UNIT_BEFORE.search(text[:m.start()]):
            continue  # "2.5 cm × 2.5 cm" is a size, not a magnification
        value = f"×{m.group(1)}"
        if value not in found:
            found.append(value)
    return tuple(found)


def _modalities(lexicon: Lexicon, mentions: list, stains: tuple[Term, ...]) -> tuple[Term | None, tuple[Term, ...]]:
    """The primary modality, and those named in the sentence that first names it.

    A chart or diagram is what the figure is, even when its caption names the modalities it
    summarizes; weak cues ("error bars") decide only when nothing else is named; a stain implies
    its modality when no modality is named. Modalities met only in other sentences are often the
    patient's history ("after an incomplete colonoscopy"), so they are not offered as answers.
    """
    redundant = set().union(*(lexicon.subsumes.get(t.id, ()) for _, t in mentions))
    mentions = [(sentence, t) for sentence, t in mentions if t.id not in redundant]
    strong = [(sentence, t) for sentence, t in mentions if not t.weak]
    if not strong:
        implied = [lexicon.generic_modality[s.implies] for s in stains if s.implies in lexicon.generic_modality]
        if implied:
            return implied[0], (implied[0],)
    figures = [(sentence, t) for sentence, t in strong if t.kind == FIGURE]
    candidates = figures or strong or mentions
    if not candidates:
        return None, ()
    sentence, primary = candidates[0]
    if primary.kind == FIGURE:
        return primary, (primary,)
    return primary, _distinct(t for s, t in strong if s == sentence and t.kind != FIGURE)


def detect_facts(caption_en: str, caption_zh: str = "", lexicon: Lexicon | None = None) -> CaptionFacts:
    """Every fact the lexicon finds in the English and/or Chinese caption (English mentions first)."""
    lexicon = lexicon or load_lexicon()
    original_zh, caption_zh = caption_zh, unicodedata.normalize("NFKC", caption_zh)  # answers quote the original
    # English phrases are also looked for in the Chinese caption ("胸部CT显示…").
    folded_en, folded_zh = fold_en(caption_en), fold_en(caption_zh)

    def mentions(category: str) -> list[tuple[tuple[int, int], Term]]:
        """(sentence, term) in mention order; sentence = (0 English | 1 Chinese, sentence number)."""
        found = []
        for source, text, matches in (
            (0, folded_en, _en_matches(lexicon, category, folded_en)),
            (1, caption_zh, sorted(_en_matches(lexicon, category, folded_zh) + _zh_matches(lexicon, category, caption_zh),
                                   key=lambda match: match[0])),
        ):
            found += [((source, len(_SENTENCE_END.findall(text, 0, start))), term) for start, _, term in matches]
        return found

    def terms(category: str) -> tuple[Term, ...]:
        return _distinct(term for _, term in mentions(category))

    stains = terms(STAIN)
    primary, modalities = _modalities(lexicon, mentions(MODALITY), stains)
    positive, absent = _findings(lexicon, folded_en, caption_zh)
    both_texts = f"{unicodedata.normalize('NFKC', caption_en)}\n{caption_zh}"
    scale = _SCALE_BAR.search(both_texts)
    stated = _ZH_STATED.search(original_zh)
    title = _ZH_SENTENCE.match(original_zh.strip())
    return CaptionFacts(
        primary_modality=primary,
        modalities=modalities,
        anatomy=terms(ANATOMY),
        views=terms(VIEW),
        sequences=terms(SEQUENCE),
        contrast=terms(CONTRAST),
        stains=stains,
        findings=_distinct(positive),
        absent_findings=_distinct(absent),
        magnifications=_magnifications(both_texts),
        scale_bar=f"{scale.group(1)} {scale.group(2).replace('um', 'μm')}" if scale else "",
        stated=(stated.group(1), _TRAILING_ASIDE.sub("", stated.group(2)).strip()) if stated else ("", ""),
        title_zh=title.group(0).strip() if title else "",
    )


def detect_modality(caption_en: str, caption_zh: str = "") -> str:
    """The modality id stored on the record (`ct`, `histology`, `chart` ...), "" when none is named."""
    primary = detect_facts(caption_en, caption_zh).primary_modality
    return primary.id if primary else ""


def find_terms(text: str, categories: tuple[str, ...]) -> list[tuple[str, Term]]:
    """(matched text, term) for every lexicon term in `text`, in either language."""
    lexicon = load_lexicon()
    folded, text = fold_en(text), unicodedata.normalize("NFKC", text)
    return [
        (source[start:end], term)
        for category in categories
        for source, matches in ((folded, _en_matches(lexicon, category, folded)), (text, _zh_matches(lexicon, category, text)))
        for start, end, term in matches
    ]


def concepts(text: str, categories: tuple[str, ...], expand: bool = False) -> set[tuple[str, str]]:
    """(category, id) of every lexicon term in `text`.

    `expand` adds what the named concepts imply (PET/CT implies CT and PET; an H&E stain implies
    histology), so a source's concepts cover an answer that names the simpler one.
    """
    terms = [term for _, term in find_terms(text, categories)]
    found = {(term.category, term.id) for term in terms}
    if expand:
        lexicon = load_lexicon()
        modality_ids = {t.id for t in terms if t.category == MODALITY} | {t.implies for t in terms if t.implies}
        modality_ids |= set().union(*(lexicon.subsumes.get(i, ()) for i in modality_ids))
        found |= {(MODALITY, i) for i in modality_ids}
    return found


# --- QA templates --------------------------------------------------------------------------------


def _choose(options: tuple[str, ...], seed: str, slot: str) -> str:
    """A stable pick (not Python's salted hash): the same record always gets the same wording."""
    digest = hashlib.sha1(f"{seed}\x1f{slot}".encode("utf-8")).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else "、".join(names[:-1]) + "和" + names[-1]


def _names(terms, limit: int = 3) -> str:
    return _join([t.name for t in terms[:limit]])


_MODALITY_QUESTIONS = {
    RADIOLOGY: ("这是什么类型的影像？", "这张影像是通过哪种检查获得的？", "图中展示的是哪种医学影像？"),
    FIGURE: ("这是什么类型的图？", "这张图属于哪一类图？"),
    "": ("这是什么类型的图像？", "这张图像属于哪种检查或成像方式？", "图中展示的是哪种医学图像？"),
}
_ANATOMY_QUESTIONS = {
    RADIOLOGY: ("图中显示的是哪个部位？", "这张影像检查的是哪个部位？", "图像中可以看到哪个解剖部位？"),
    PATHOLOGY: ("这是哪个组织或器官的切片？", "图中的组织来自哪个器官？"),
    "": ("图中显示的是哪个部位？", "图中涉及哪个器官或部位？"),
}
_FINDING_QUESTIONS = ("图中可见哪些异常表现？", "这张{noun}显示了什么病变？", "图中有什么主要发现？")
_VIEW_QUESTIONS = ("这张影像是在哪个方位获得的？", "这是哪个方位的图像？")
_SEQUENCE_QUESTIONS = ("这是哪种磁共振序列的图像？", "这张磁共振图像采用的是什么序列？")
_CONTRAST_QUESTIONS = ("这是增强扫描吗？", "该检查是否进行了增强扫描？")
_STAIN_QUESTIONS = ("这张切片采用了什么染色方法？", "图中组织使用的是哪种染色？")
_MAGNIFICATION_QUESTIONS = ("图像的放大倍数是多少？", "这张{noun}是在多大倍数下拍摄的？")
_SCALE_QUESTIONS = ("图中比例尺代表多长？", "图中的比例尺是多少？")
_STATED_QUESTIONS = ("图中显示了什么？", "请描述图中的主要表现。", "这张{noun}的主要表现是什么？")
_SUMMARY_QUESTIONS = ("这张图展示的是什么内容？", "请简要说明这张图的内容。")


def _pairs(facts: CaptionFacts, seed: str) -> list[QaPair]:
    primary = facts.primary_modality
    kind = primary.kind if primary else ""
    noun = _NOUN_BY_KIND.get(kind, "图像")
    is_figure = kind == FIGURE
    is_imaging = kind in (RADIOLOGY, "")  # views, sequences and contrast only make sense for scans
    pairs: list[QaPair] = []

    def ask(slot: str, questions: tuple[str, ...], answer: str) -> None:
        pairs.append(QaPair(_choose(questions, seed, slot).format(noun=noun), answer))

    if primary:
        shown = facts.modalities
        answer = f"这是一张{primary.name}。" if len(shown) == 1 else f"图中包括{_names(shown)}。"
        ask(MODALITY, _MODALITY_QUESTIONS.get(kind, _MODALITY_QUESTIONS[""]), answer)
    if is_figure:
        if facts.title_zh:
            ask("summary", _SUMMARY_QUESTIONS, facts.title_zh + "。")
        return pairs[:MAX_PAIRS]
    if facts.anatomy:
        if kind == PATHOLOGY:
            ask(ANATOMY, _ANATOMY_QUESTIONS[PATHOLOGY], f"这是{_names(facts.anatomy)}组织的切片。")
        else:
            ask(ANATOMY, _ANATOMY_QUESTIONS.get(kind, _ANATOMY_QUESTIONS[""]), f"图中显示的是{_names(facts.anatomy)}。")
    if facts.findings and (primary or facts.anatomy):  # else "mass" is likely a molecular mass
        ask(FINDING, _FINDING_QUESTIONS, f"图中可见{_names(facts.findings)}。")
    if facts.stains:
        ask(STAIN, _STAIN_QUESTIONS, f"采用的是{_names(facts.stains)}。")
    if is_imaging and facts.views:
        ask(VIEW, _VIEW_QUESTIONS, f"这是{_names(facts.views, 2)}图像。")
    if is_imaging and facts.sequences and (primary is None or primary.id == "mri"):
        ask(SEQUENCE, _SEQUENCE_QUESTIONS, f"这是{_names(facts.sequences, 2)}图像。")
    if is_imaging and len(facts.contrast) == 1:  # both phases named: which panel is which is unknown
        enhanced = facts.contrast[0].id == "enhanced"
        ask(CONTRAST, _CONTRAST_QUESTIONS, "是的，这是增强扫描图像。" if enhanced else "不是，这是平扫图像。")
    if facts.magnifications and (kind in _MAGNIFIED_KINDS or facts.stains):
        shown = list(facts.magnifications[:3])
        answer = f"放大倍数为{shown[0]}。" if len(shown) == 1 else f"放大倍数分别为{_join(shown)}。"
        ask("magnification", _MAGNIFICATION_QUESTIONS, answer)
    if facts.scale_bar:
        ask("scale", _SCALE_QUESTIONS, f"比例尺为{facts.scale_bar}。")
    if facts.absent_findings and (primary or facts.anatomy):
        name = facts.absent_findings[0].name
        pairs.append(QaPair(f"图中是否可见{name}？", f"未见{name}。"))
    verb, clause = facts.stated
    if clause:
        ask("stated", _STATED_QUESTIONS, f"图中{verb}{clause}。")
    elif not pairs and facts.title_zh:
        ask("summary", _SUMMARY_QUESTIONS, facts.title_zh + "。")
    return pairs[:MAX_PAIRS]


def template_qa(record_id: str, caption_en: str, caption_zh: str = "") -> list[QaPair]:
    """Grounded Chinese QA pairs for one figure ([] when the caption states nothing to ask about).

    `record_id` only seeds the choice of wording, so the output is a pure function of the inputs.
    """
    return _pairs(detect_facts(caption_en, caption_zh), record_id)
