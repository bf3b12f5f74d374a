"""The shipped EN→ZH medical glossary: prompt terminology, consistency metric, jieba user dictionary.

`chimed_pipeline/data/glossary.tsv` has columns `en`, `zh`, `also` (other acceptable renderings,
`|`-separated, e.g. the abbreviation "CT"). Lines starting with `#` are comments.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import chimed_pipeline

GLOSSARY_PATH = Path(chimed_pipeline.__file__).resolve().parent / "data" / "glossary.tsv"
_HAS_CJK = re.compile(r"[\u4e00-\u9fff]")


@dataclasses.dataclass(frozen=True)
class Term:
    en: str
    zh: str
    also: tuple[str, ...] = ()

    @property
    def renderings(self) -> tuple[str, ...]:
        return (self.zh, *self.also)


@dataclasses.dataclass(frozen=True)
class GlossaryUse:
    """How a translation used the glossary: terms its source contains, and those rendered as listed."""

    applicable: int
    followed: int


class Glossary:
    def __init__(self, terms: list[Term]) -> None:
        self.terms = tuple(terms)
        self._by_en = {term.en.lower(): term for term in self.terms}
        # Longest first, so "computed tomography" is not found inside a longer term; plurals match.
        alternatives = sorted(self._by_en, key=lambda en: (-len(en), en))
        body = "|".join(re.escape(en) for en in alternatives) or r"(?!x)x"
        self._pattern = re.compile(rf"(?<![\w-])({body})(?:s|es)?(?![\w-])", re.IGNORECASE)

    def __len__(self) -> int:
        return len(self.terms)

    def terms_in(self, text: str) -> list[Term]:
        """Glossary terms occurring in `text`, each once, in order of first occurrence."""
        found: dict[str, Term] = {}
        for match in self._pattern.finditer(text):
            found.setdefault(match.group(1).lower(), self._by_en[match.group(1).lower()])
        return list(found.values())

    def use(self, source: str, target: str) -> GlossaryUse:
        terms = self.terms_in(source)
        followed = sum(any(r in target for r in term.renderings) for term in terms)
        return GlossaryUse(applicable=len(terms), followed=followed)

    def jieba_userdict_lines(self) -> list[str]:
        """Lines for `jieba.load_userdict` ("word tag"; jieba suggests the frequency itself)."""
        words = {r for term in self.terms for r in term.renderings if _HAS_CJK.search(r) and " " not in r}
        return [f"{word} n" for word in sorted(words)]


def parse_glossary(text: str) -> Glossary:
    terms = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        en, zh, also = (line.split("\t") + ["", ""])[:3]
        if en == "en" and zh == "zh":  # the header
            continue
        if en.strip() and zh.strip():
            terms.append(Term(en.strip(), zh.strip(), tuple(a.strip() for a in also.split("|") if a.strip())))
    return Glossary(terms)


@functools.lru_cache(maxsize=None)
def load_glossary(path: str = str(GLOSSARY_PATH)) -> Glossary:
    return parse_glossary(Path(path).read_text(encoding="utf-8"))


def jieba_userdict_lines(path: str = str(GLOSSARY_PATH)) -> list[str]:
    """The glossary's Chinese terms as jieba user-dictionary lines."""
    return load_glossary(path).jieba_userdict_lines()
