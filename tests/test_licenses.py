"""License normalization: URLs, codes, prose, and the fail-closed admission policy."""
import pytest

from transforms.licenses import (
    CC0, CC_BY, CC_BY_NC, CC_BY_NC_ND, CC_BY_NC_SA, CC_BY_ND, CC_BY_SA, COVID_TIMEBOUND, PUBLIC_DOMAIN, UNKNOWN,
    LicensePolicy, is_admissible, license_from_code, license_from_text, license_from_url, normalize_license_class,
    strictest,
)

COVID_PROSE = (
    "This article is made available via the PMC Open Access Subset for unrestricted research re-use and "
    "secondary analysis in any form or by any means with acknowledgement of the original source. These "
    "permissions are granted for the duration of the World Health Organization (WHO) declaration of "
    "COVID-19 as a global pandemic."
)


@pytest.mark.parametrize("url, expected", [
    ("http://creativecommons.org/licenses/by/2.0", CC_BY),
    ("https://creativecommons.org/licenses/by/4.0/", CC_BY),
    ("https://creativecommons.org/licenses/by-nc-nd/4.0/legalcode", CC_BY_NC_ND),
    ("http://creativecommons.org/licenses/by-nc/4.0/", CC_BY_NC),
    ("http://creativecommons.org/licenses/by-nc-sa/3.0/igo/", CC_BY_NC_SA),
    ("https://creativecommons.org/licenses/by-sa/4.0/", CC_BY_SA),
    ("https://creativecommons.org/licenses/by-nd/4.0/", CC_BY_ND),
    ("https://creativecommons.org/publicdomain/zero/1.0/", CC0),
    ("https://creativecommons.org/publicdomain/mark/1.0/", PUBLIC_DOMAIN),
    ("https://www.elsevier.com/tdm/userlicense/1.0/", None),
    ("", None),
])
def test_license_from_url(url, expected):
    assert license_from_url(url) == expected


@pytest.mark.parametrize("code, expected", [
    ("cc-by", CC_BY), ("CC BY 4.0", CC_BY), ("ccbylicense", CC_BY), ("ccbyncndlicense", CC_BY_NC_ND),
    ("CC BY-NC-SA", CC_BY_NC_SA), ("CC0", CC0), ("CC0 1.0", CC0), ("public-domain", PUBLIC_DOMAIN),
    ("COVID-19", COVID_TIMEBOUND), ("open-access", None), ("NO-CC CODE", None), ("", None),
])
def test_license_from_code(code, expected):
    assert license_from_code(code) == expected


@pytest.mark.parametrize("prose, expected", [
    ("distributed under the terms of the Creative Commons Attribution License, which permits unrestricted use",
     CC_BY),
    ("under the CC BY-NC-ND license (http://creativecommons.org/licenses/by-nc-nd/4.0/)", CC_BY_NC_ND),
    ("Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International", CC_BY_NC_SA),
    ("Creative Commons Attribution Non Commercial No Derivatives licence", CC_BY_NC_ND),
    # BMC: the CC0 waiver is about the data; the article is CC BY.
    ("distributed under the terms of the Creative Commons Attribution 4.0 International License. The Creative "
     "Commons Public Domain Dedication waiver applies to the data made available in this article", CC_BY),
    ("This article is a US Government work and is in the public domain in the USA.", PUBLIC_DOMAIN),
    (COVID_PROSE, COVID_TIMEBOUND),
    ("Copyright 2020 Elsevier Ltd. All rights reserved.", None),
    ("", None),
])
def test_license_from_text(prose, expected):
    assert license_from_text(prose) == expected


def test_strictest_fails_closed():
    assert strictest([CC_BY, CC0]) == CC_BY
    assert strictest([CC_BY, CC_BY_NC_ND, CC_BY_SA]) == CC_BY_NC_ND
    assert strictest([CC_BY, COVID_TIMEBOUND]) == COVID_TIMEBOUND
    assert strictest([CC_BY, UNKNOWN]) == UNKNOWN
    assert strictest([]) == UNKNOWN


def test_covid_timebound_and_unknown_never_pass_commercial_or_noncommercial():
    for license_class in (COVID_TIMEBOUND, UNKNOWN):
        assert not is_admissible(license_class, LicensePolicy.COMMERCIAL)
        assert not is_admissible(license_class, LicensePolicy.NONCOMMERCIAL)
        assert is_admissible(license_class, LicensePolicy.ANY)
    assert is_admissible(CC_BY, LicensePolicy.COMMERCIAL)
    assert not is_admissible(CC_BY_NC, LicensePolicy.COMMERCIAL)
    assert is_admissible(CC_BY_NC, LicensePolicy.NONCOMMERCIAL)


def test_manifest_license_spellings_still_normalize():
    assert normalize_license_class("CC BY 4.0") == CC_BY
    assert normalize_license_class("cc-by-nc") == CC_BY_NC
    assert normalize_license_class("cc_by_nc_nd") == CC_BY_NC_ND
    assert normalize_license_class("whatever") == UNKNOWN
