"""License classes and the admission policy (`--license commercial|noncommercial|any`)."""
from __future__ import annotations

import enum
import re


class LicensePolicy(str, enum.Enum):
    COMMERCIAL = "commercial"  # PMC's oa_comm rule: CC BY, CC0, public domain
    NONCOMMERCIAL = "noncommercial"  # any Creative Commons license (incl. NC / ND / SA)
    ANY = "any"  # everything, unknown and time-bound included


CC_BY = "cc-by"
CC0 = "cc0"
PUBLIC_DOMAIN = "pd"
CC_BY_SA = "cc-by-sa"
CC_BY_ND = "cc-by-nd"
CC_BY_NC = "cc-by-nc"
CC_BY_NC_SA = "cc-by-nc-sa"
CC_BY_NC_ND = "cc-by-nc-nd"
COVID_TIMEBOUND = "covid-timebound"  # PMC's time-limited COVID-19 license: not Creative Commons
UNKNOWN = "unknown"

LICENSE_CLASSES = (
    CC_BY, CC0, PUBLIC_DOMAIN, CC_BY_SA, CC_BY_ND, CC_BY_NC, CC_BY_NC_SA, CC_BY_NC_ND, COVID_TIMEBOUND, UNKNOWN,
)
COMMERCIAL_USE = frozenset({CC_BY, CC0, PUBLIC_DOMAIN})
NONCOMMERCIAL_USE = COMMERCIAL_USE | {CC_BY_SA, CC_BY_ND, CC_BY_NC, CC_BY_NC_SA, CC_BY_NC_ND}


def normalize_license_class(value: str) -> str:
    """A license as written in a manifest ("CC BY 4.0", "cc-by-nc", "CC0") -> one of LICENSE_CLASSES."""
    return license_from_code(value) or UNKNOWN


def is_admissible(license_class: str, policy: LicensePolicy) -> bool:
    """Fail closed: unknown never passes the commercial or noncommercial policy."""
    if policy is LicensePolicy.ANY:
        return True
    allowed = COMMERCIAL_USE if policy is LicensePolicy.COMMERCIAL else NONCOMMERCIAL_USE
    return license_class in allowed


# --- Normalization from what articles and file lists say -----------------------------------------
# Each `license_from_*` returns a class, or None when the input says nothing decisive, so callers
# can fall through to the next, weaker source (URL -> license code -> prose -> copyright statement
# -> file list) and only then settle on UNKNOWN.

# Most permissive first; where two sources disagree the stricter one wins (fail closed).
STRICTNESS = (
    CC0, PUBLIC_DOMAIN, CC_BY, CC_BY_SA, CC_BY_ND, CC_BY_NC, CC_BY_NC_SA, CC_BY_NC_ND, COVID_TIMEBOUND, UNKNOWN,
)
_RANK = {name: rank for rank, name in enumerate(STRICTNESS)}


def strictest(classes) -> str:
    """The most restrictive of several license classes; UNKNOWN when there are none."""
    return max(classes, key=_RANK.__getitem__, default=UNKNOWN)


def _cc_by_class(noncommercial: bool, noderivatives: bool, sharealike: bool) -> str:
    if noncommercial:
        return CC_BY_NC_ND if noderivatives else CC_BY_NC_SA if sharealike else CC_BY_NC
    return CC_BY_ND if noderivatives else CC_BY_SA if sharealike else CC_BY


_CC_URL = re.compile(r"creativecommons\.org/(licenses|publicdomain)/([a-z-]+)", re.IGNORECASE)


def license_from_url(url: str) -> str | None:
    """A creativecommons.org license URL -> class; other URLs (publisher terms) say nothing."""
    match = _CC_URL.search(url or "")
    if not match:
        return None
    kind, code = match.group(1).lower(), match.group(2).lower()
    if kind == "publicdomain":
        return CC0 if code == "zero" else PUBLIC_DOMAIN
    if code == "publicdomain":  # the retired creativecommons.org/licenses/publicdomain/ deed
        return PUBLIC_DOMAIN
    parts = set(code.split("-"))
    if "by" not in parts:
        return None
    return _cc_by_class("nc" in parts, "nd" in parts, "sa" in parts)


_VERSION_OR_FILLER = re.compile(r"\d+\.\d+|licen[cs]e|international|igo|unported|generic")
_CODES = {
    "ccby": CC_BY, "ccbysa": CC_BY_SA, "ccbynd": CC_BY_ND, "ccbync": CC_BY_NC, "ccbyncsa": CC_BY_NC_SA,
    "ccbyncnd": CC_BY_NC_ND, "cc0": CC0, "cczero": CC0, "pd": PUBLIC_DOMAIN, "publicdomain": PUBLIC_DOMAIN,
}


def license_from_code(code: str) -> str | None:
    """A short license code -> class: `license-type` ("cc-by", "CC BY-NC 4.0"), ali `content-type`
    ("ccbyncndlicense"), a file-list License column ("CC BY-NC-ND", "NO-CC CODE" -> None)."""
    compact = re.sub(r"[^a-z0-9]", "", _VERSION_OR_FILLER.sub("", (code or "").lower()))
    if "covid" in compact:
        return COVID_TIMEBOUND
    return _CODES.get(compact)

_COVID = re.compile(r"covid|coronavirus|sars-cov-2")
_TIME_BOUND = re.compile(r"duration|pandemic|public health emergency|time-limited|temporar")
_CC_ABBREVIATION = re.compile(r"\bcc[ -]?by((?:[ -]?(?:nc|nd|sa)\b)*)")
_CC_ATTRIBUTION = re.compile(r"creative commons(?: \w+)?? attribution")
_NONCOMMERCIAL = re.compile(r"non[- ]?commercial")
_NODERIVATIVES = re.compile(r"no[- ]?deriv")
_SHAREALIKE = re.compile(r"share[- ]?alike")
_CC0 = re.compile(r"\bcc0\b|\bcc zero\b|creative commons zero")
_PUBLIC_DOMAIN = re.compile(r"\bpublic domain\b")


def license_from_text(text: str) -> str | None:
    """License prose (`<license-p>`, `<copyright-statement>`) -> class, None when it names none.

    Every license the prose names counts and the strictest wins: BMC's "CC BY ... The Creative
    Commons Public Domain Dedication waiver applies to the data" is CC BY, not CC0. PMC's
    time-limited COVID-19 grant is checked first: it is not Creative Commons, whatever else it says.
    """
    prose = " ".join((text or "").lower().replace("\u2010", "-").replace("\u2011", "-").split())
    if _COVID.search(prose) and _TIME_BOUND.search(prose):
        return COVID_TIMEBOUND
    found = set()
    for match in _CC_ABBREVIATION.finditer(prose):
        modifiers = match.group(1)
        found.add(_cc_by_class("nc" in modifiers, "nd" in modifiers, "sa" in modifiers))
    if _CC_ATTRIBUTION.search(prose):
        found.add(_cc_by_class(bool(_NONCOMMERCIAL.search(prose)), bool(_NODERIVATIVES.search(prose)),
                               bool(_SHAREALIKE.search(prose))))
    if found:
        return strictest(found)  # a CC0 / public-domain remark beside a CC license is about the data
    if _CC0.search(prose) or "public domain dedication" in prose:
        return CC0
    if _PUBLIC_DOMAIN.search(prose):
        return PUBLIC_DOMAIN
    return None
