"""License classes and the admission policy (`--license commercial|noncommercial|any`)."""
from __future__ import annotations

import enum


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
    text = value.strip().lower().replace("_", "-").replace(" ", "-")
    if text in LICENSE_CLASSES:
        return text
    for prefix in sorted(LICENSE_CLASSES, key=len, reverse=True):
        if text.startswith(prefix + "-"):  # "cc-by-4.0" -> "cc-by"
            return prefix
    return UNKNOWN


def is_admissible(license_class: str, policy: LicensePolicy) -> bool:
    """Fail closed: unknown never passes the commercial or noncommercial policy."""
    if policy is LicensePolicy.ANY:
        return True
    allowed = COMMERCIAL_USE if policy is LicensePolicy.COMMERCIAL else NONCOMMERCIAL_USE
    return license_class in allowed
