"""JATS text written for the tests, in the two shapes PMC serves (legacy .nxml, OAI-PMH namespaced)."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from transforms.licenses import CC_BY, CC_BY_NC, CC_BY_NC_ND

# The real PMC files, read by path (never copied into the repo).
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "jats"

# file: (pmcid, pmid, license, [(figure id, label)], year)
EXPECTED = {
    "1471-2180-11-174.nxml": ("PMC3166277", "21810267", CC_BY, [("F1", "Figure 1"), ("F2", "Figure 2"),
                                                               ("F3", "Figure 3"), ("F4", "Figure 4")], "2011"),
    "1472-6831-8-11.nxml": ("PMC2329613", "18405359", CC_BY, [], "2008"),
    "pone.0046493.nxml": ("PMC3460867", "23029536", CC_BY, [(f"pone-0046493-g00{n}", f"Figure {n}")
                                                           for n in range(1, 5)], "2012"),
    "PMC10777901.xml": ("PMC10777901", "38201660", CC_BY, [("cancers-16-00233-f001", "Figure 1")], "2024"),
    "PMC9500000.xml": ("PMC9500000", "36160045", CC_BY_NC_ND, [("undfig1", "")] + [(f"fig{n}", f"Figure {n}")
                                                                                  for n in range(1, 5)], "2022"),
    "PMC10653940.xml": ("PMC10653940", "37668408", CC_BY, [(f"F{n}", f"Fig {n}") for n in range(1, 6)], "2023"),
    "PMC5000000.xml": ("PMC5000000", "", CC_BY_NC, [], "1868"),
}

LEGACY_DOCTYPE = (
    '<!DOCTYPE article PUBLIC "-//NLM//DTD JATS (Z39.96) Journal Archiving and Interchange DTD v1.0 20120330//EN" '
    '"JATS-archivearticle1.dtd">'
)
CC_BY_LICENSE = (
    '<permissions><copyright-statement>Copyright 2021 The Authors</copyright-statement>'
    '<license license-type="open-access" xlink:href="http://creativecommons.org/licenses/by/4.0/">'
    "<license-p>This is an Open Access article distributed under the terms of the Creative Commons Attribution "
    "License.</license-p></license></permissions>"
)
CC_BY_NC_LICENSE = (
    "<permissions><license><ali:license_ref>https://creativecommons.org/licenses/by-nc/4.0/</ali:license_ref>"
    "<license-p>Distributed under CC BY-NC 4.0.</license-p></license></permissions>"
)


def fig(fig_id: str, label: str, caption: str, href: str, extra: str = "") -> str:
    """A <fig>; `caption` is the inner XML of <caption> ("" leaves the caption out)."""
    label_xml = f"<label>{label}</label>" if label else ""
    caption_xml = f"<caption>{caption}</caption>" if caption else ""
    graphic = f'<graphic xlink:href="{href}"/>' if href else ""
    return f'<fig id="{fig_id}" position="float">{label_xml}{caption_xml}{graphic}{extra}</fig>'


def _front(pmcid_digits: str, permissions: str, id_type: str) -> str:
    return (
        "<front><journal-meta><journal-id journal-id-type=\"nlm-ta\">Test Radiol</journal-id>"
        "<journal-title-group><journal-title>Journal of Test Radiology</journal-title></journal-title-group>"
        "</journal-meta><article-meta>"
        '<article-id pub-id-type="pmid">31000001</article-id>'
        f'<article-id pub-id-type="{id_type}">{"PMC" if id_type == "pmcid" else ""}{pmcid_digits}</article-id>'
        "<title-group><article-title>Imaging findings in a test cohort</article-title></title-group>"
        '<pub-date pub-type="epub"><day>3</day><month>2</month><year>2021</year></pub-date>'
        '<pub-date pub-type="pmc-release"><year>2022</year></pub-date>'
        f"{permissions}</article-meta></front>"
    )


def legacy_article(pmcid_digits: str, body: str = "", floats: str = "", permissions: str = CC_BY_LICENSE) -> bytes:
    """A legacy PMC .nxml: DOCTYPE, no default namespace, `pub-id-type="pmc"`."""
    floats_xml = f"<floats-group>{floats}</floats-group>" if floats else ""
    return (
        f"{LEGACY_DOCTYPE}\n"
        '<article xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:ali="http://www.niso.org/schemas/ali/1.0/" '
        'article-type="research-article">'
        f"{_front(pmcid_digits, permissions, 'pmc')}<body>{body}</body>{floats_xml}</article>"
    ).encode("utf-8")


def oai_article(pmcid_digits: str, body: str = "", floats: str = "", permissions: str = CC_BY_LICENSE) -> bytes:
    """The PMC Cloud / OAI-PMH form: GetRecord envelope, JATS 1.3 default namespace, `pmcid` ids."""
    floats_xml = f"<floats-group>{floats}</floats-group>" if floats else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?><OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/">'
        "<GetRecord><record><header>"
        f"<identifier>oai:pubmedcentral.nih.gov:{pmcid_digits}</identifier></header><metadata>"
        '<article xmlns="https://jats.nlm.nih.gov/ns/archiving/1.3/" xmlns:xlink="http://www.w3.org/1999/xlink" '
        'xmlns:ali="http://www.niso.org/schemas/ali/1.0/" dtd-version="1.3" article-type="research-article">'
        f"{_front(pmcid_digits, permissions, 'pmcid')}<body>{body}</body>{floats_xml}</article>"
        "</metadata></record></GetRecord></OAI-PMH>"
    ).encode("utf-8")


def image_bytes(size: tuple[int, int], image_format: str, shade: int = 90) -> bytes:
    """A small grey-gradient image generated in memory."""
    width, height = size
    image = Image.new("L", size)
    image.putdata([(shade + (x * 7 + y * 3)) % 256 for y in range(height) for x in range(width)])
    out = io.BytesIO()
    image.save(out, format=image_format)
    return out.getvalue()


def entity_bomb(levels: int) -> bytes:
    entities = ['<!ENTITY e0 "lol lol lol lol lol lol lol lol lol lol">']
    entities += [f'<!ENTITY e{n} "{f"&e{n - 1};" * 10}">' for n in range(1, levels)]
    caption = f"<p>Bomb &e{levels - 1}; here.</p>"
    return (f'<?xml version="1.0"?><!DOCTYPE article [{"".join(entities)}]>'
            '<article xmlns:xlink="http://www.w3.org/1999/xlink"><front><article-meta>'
            '<article-id pub-id-type="pmc">109</article-id></article-meta></front>'
            f"<floats-group>{fig('F1', 'Figure 1', caption, 'g1')}</floats-group></article>").encode()
