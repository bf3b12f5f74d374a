"""transforms.jats: figures, captions, ids, licenses and inline mentions, on real PMC files and our own."""
import time

import pytest

from jats_fixtures import CC_BY_NC_LICENSE, EXPECTED, SAMPLES, entity_bomb, fig, legacy_article, oai_article
from transforms.jats import MalformedArticle, normalize_pmcid, parse_article, sentence_spans, sniff_pmcid
from transforms.licenses import CC_BY, CC_BY_NC, CC_BY_NC_ND, COVID_TIMEBOUND, UNKNOWN


def sample(name: str) -> bytes:
    path = SAMPLES / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: the real PMC samples live in ../shared/samples beside the checkout")
    return path.read_bytes()


# --- Every real sample file, read by path ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_ids_license_and_exact_figures(name):
    pmcid, pmid, license_class, figures, year = EXPECTED[name]
    article = parse_article(sample(name))
    assert (article.pmcid, article.pmid, article.license, article.year) == (pmcid, pmid, license_class, year)
    assert [(figure.figure_id, figure.label) for figure in article.figures] == figures
    assert article.title and article.journal


def test_sample_if_all_present_every_file_is_covered():
    if not SAMPLES.is_dir():
        pytest.skip(f"{SAMPLES} is absent")
    assert {path.name for path in SAMPLES.iterdir()} == set(EXPECTED)


def test_sample_complete_captions_namespaced_floats_group():
    figure, = parse_article(sample("PMC10777901.xml")).figures
    assert figure.href == "cancers-16-00233-g001"
    assert figure.caption == (
        "Presurgical 18F-FDG PET/CT results of 3 patients with presumed localized CC (arrows) showing additional "
        "colon lesion or visceral metastasis not visualized at conventional staging (dotted arrows). 57-old year "
        "man with (pT3) sigmoid primary (A) and synchronous invasive carcinoma (T2) of left colon (B). 74-old year "
        "man with 11 cm (pT3) tumor of the caecum (C), and adenoma with high grade dysplasia of the right colon (D). "
        "46-old year woman with incomplete colonoscopy due to a sigmoid tumoral stenosis (pT3) (E), and right ovary "
        "metastasis (F)."
    )
    assert figure.mentions == (
        "All colonic tumors previously detected with colonoscopy were characterized by pathologic 18F-FDG uptake "
        "(Figure 1).",
    )


def test_sample_complete_captions_title_plus_paragraph():
    figures = parse_article(sample("pone.0046493.nxml")).figures
    assert figures[0].caption == (
        "Chemical structure of inhibitors. Chemical structures of A, THL and B, MmPPOX. The proposed mechanism of "
        "action involves the opening of the cycle in each molecule. Nucleophilic sites attacked by catalytic serine "
        "are indicated by an arrow. Theoretical exact masses were calculated using the online calculator provided by "
        "SIS, Inc. (http://www.sisweb.com/referenc/tools/exactmass.htm)."
    )
    assert "following purification using Ni2+-NTA resin" in figures[1].caption


def test_sample_spacing_at_inline_markup_is_preserved():
    figures = parse_article(sample("1471-2180-11-174.nxml")).figures
    assert figures[3].caption == (
        "Effects of tKCN (timing of KCN addition). (A) On time delay tL - tKCN. The solid curve shows the quadratic "
        "fit of y = 54.52 - 1.09x + 0.02(x - 36.57)2. Error bars indicate the associated SDs. As an example, when "
        "tKCN = 45 min, the observed tL is 50.11 min, thus the time delay is tL - tKCN = 5.11 min. (B) On lysis time "
        "SD (closed circles) and CV (closed triangles). Solid curve shows the quadratic fit of SD against tKCN "
        "(y = 13.24 - 0.28x + 0.01(x - 36.57)2)."
    )
    assert "late promoter pR' activity [50] on MLTs" in figures[2].caption


def test_sample_every_caption_paragraph_is_kept():
    figures = parse_article(sample("PMC9500000.xml")).figures
    assert figures[0].caption == "" and figures[0].href == "fx1"  # the graphical abstract
    assert figures[1].caption.startswith("High-throughput screening strategy and validation. (A) Schematic")
    assert "(individual images: n = 1,464, nWT = 700, nHD = 764;" in figures[1].caption
    assert figures[1].caption.endswith("The neural network correctly identifies the rescued HTT\u2212/\u2212 + "
                                       "HTT-OE as WT.")
    assert figures[3].caption.endswith("(H) Example images for the quantification of the dose response in (G). "
                                       "All micropattern diameters, 700 \u03bcm.")
    # Figures sit inside body <p>s here: their captions must not leak into the mentions.
    assert all("Schematic illustration of the high-throughput" not in m for m in figures[1].mentions)
    assert figures[1].mentions[0].endswith("back to the normal state (Figure 1A).")


def test_sample_comma_in_label_and_short_label_form():
    figures = parse_article(sample("PMC10653940.xml")).figures
    assert figures[1].caption == (
        "Comparison of dynamic range between a luminescent assay and ELISA. (A\u2013D) Dynamic range of (A) "
        "leptin_tag, (B) IL-22_tag, (C) IFN-\u03b2_tag, and (D) tag_ IFN-\u03b2 represented in relative light unit "
        "(RLU) and OD. Data are presented as means \u00b1 SD based on three biological replicates."
    )
    assert figures[1].mentions[-1].endswith("abolished binding of the antibody with the protein (Fig. 2D).")


def test_sample_scanned_pages_are_not_figures():
    assert parse_article(sample("PMC5000000.xml")).figures == ()


# --- Our own fixtures ----------------------------------------------------------------------------------


def test_inline_markup_never_glues_words_and_title_gets_a_stop():
    caption = ("<title>Thyroid function</title><p>Serum T<sub>4</sub> in males and T<sub>3</sub>"
               "<sup>*</sup> in <italic>females</italic>, <bold>n</bold> = 12.</p><p>Second paragraph</p>")
    figure, = parse_article(legacy_article("101", body=f"<sec><p>Text.</p>{fig('F1', 'Fig. 1.', caption, 'g1')}"
                                                        "</sec>")).figures
    assert figure.caption == "Thyroid function. Serum T4 in males and T3* in females, n = 12. Second paragraph"
    assert figure.label == "Fig. 1."


def test_fig_group_caption_and_label_apply_to_its_figures():
    group = (
        '<fig-group id="G1"><label>Figure 2</label><caption><p>Brain MRI of patient 1.</p></caption>'
        + fig("F2a", "", "<p>(a) T1-weighted axial image.</p>", "g2a")
        + fig("F2b", "Figure 2b", "", "g2b")
        + "</fig-group>"
    )
    body = f'<p>The lesion enhances (<xref rid="G1" ref-type="fig">Figure 2</xref>).</p>{group}'
    figures = parse_article(legacy_article("102", body=body)).figures
    assert [(f.figure_id, f.label, f.caption) for f in figures] == [
        ("F2a", "Figure 2", "Brain MRI of patient 1. (a) T1-weighted axial image."),
        ("F2b", "Figure 2b", "Brain MRI of patient 1."),
    ]
    assert figures[0].mentions == figures[1].mentions == ("The lesion enhances (Figure 2).",)


def test_graphics_direct_in_alternatives_and_not_figures():
    floats = (
        fig("F1", "Figure 1", "<p>Chest X-ray.</p>", "",
            extra='<alternatives><graphic xlink:href="f1-print" specific-use="print"/>'
                  '<graphic xlink:href="f1-web"/></alternatives>')
        + '<table-wrap id="T1"><label>Table 1</label><caption><p>Doses.</p></caption>'
          '<graphic xlink:href="t1"/></table-wrap>'
        + '<disp-formula id="E1"><graphic xlink:href="e1"/></disp-formula>'
        + '<graphic xlink:href="page-1" content-type="scanned-page"/>'
        + '<fig id="S1"><label>Page</label><graphic xlink:href="page-2" content-type="scanned-page"/></fig>'
        + fig("F3", "Figure 3", "<p>A figure whose graphic is missing.</p>", "")
    )
    figures = parse_article(oai_article("103", floats=floats)).figures
    assert [(f.figure_id, f.href) for f in figures] == [("F1", "f1-print"), ("F3", "")]


def test_mentions_attribute_order_several_rids_dedup_cap_and_no_self_citation():
    figs = (fig("F1", "Figure 1", '<p>CT (see <xref ref-type="fig" rid="F1">Figure 1</xref>).</p>', "g1")
            + fig("F2", "Figure 2", "<p>MRI.</p>", "g2"))
    sentences = [f'CT shows a mass in case {n} (<xref rid="F1" ref-type="fig">Fig. 1</xref>).' for n in range(7)]
    body = (
        '<sec><p>Both modalities agree (<xref rid="F1 F2" ref-type="fig">Figs. 1 and 2</xref>). '
        + " ".join(sentences) + "</p>"
        '<p>Both modalities agree (<xref ref-type="fig" rid="F1 F2">Figs. 1 and 2</xref>). '
        "Unrelated sentence with e.g. a mass. Et al. is not cited.</p>"
        '<p>The MRI, i.e. <xref ref-type="fig" rid="F2">Figure 2</xref>, shows edema. Next.</p></sec>'
    )
    figures = parse_article(legacy_article("104", body=body, floats=figs)).figures
    assert figures[0].mentions == ("Both modalities agree (Figs. 1 and 2).",) + tuple(
        f"CT shows a mass in case {n} (Fig. 1)." for n in range(4))
    assert figures[1].mentions == ("Both modalities agree (Figs. 1 and 2).",
                                   "The MRI, i.e. Figure 2, shows edema.")
    assert len(parse_article(legacy_article("104", body=body, floats=figs), max_mentions=2).figures[0].mentions) == 2


def test_sentence_spans_keep_abbreviations_together():
    text = "As shown in Fig. 2, Smith et al. found a mass. The CT (Fig. 3) was normal! 2 cases. done"
    assert [text[s:e].strip() for s, e in sentence_spans(text)] == [
        "As shown in Fig. 2, Smith et al. found a mass.", "The CT (Fig. 3) was normal!", "2 cases. done"]


def test_figure_without_id_label_or_caption_is_still_listed():
    floats = '<fig><graphic xlink:href="ga1"/></fig>'
    figure, = parse_article(oai_article("105", floats=floats)).figures
    assert (figure.figure_id, figure.label, figure.caption, figure.href) == ("", "", "", "ga1")


def test_oai_envelope_ids_and_metadata():
    article = parse_article(oai_article("6000001", floats=fig("f1", "Figure 1", "<p>PET/CT.</p>", "g1")))
    assert (article.pmcid, article.pmid, article.title, article.journal, article.year) == (
        "PMC6000001", "31000001", "Imaging findings in a test cohort", "Journal of Test Radiology", "2021")
    assert (article.license, article.license_url) == (CC_BY, "http://creativecommons.org/licenses/by/4.0/")


def test_oai_error_response_is_malformed():
    error = (b'<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/"><error code="idDoesNotExist">'
             b"No matching identifier</error></OAI-PMH>")
    with pytest.raises(MalformedArticle, match="idDoesNotExist"):
        parse_article(error)


@pytest.mark.parametrize("permissions, license_class, url", [
    (CC_BY_NC_LICENSE, CC_BY_NC, "https://creativecommons.org/licenses/by-nc/4.0/"),
    ('<permissions><license license-type="cc-by"><license-p>Open access.</license-p></license></permissions>',
     CC_BY, ""),
    ("<permissions><license><license-p>Creative Commons Attribution-NonCommercial-NoDerivatives 4.0"
     "</license-p></license></permissions>", CC_BY_NC_ND, ""),
    ("<permissions><copyright-statement>This is an open access article under the CC BY license."
     "</copyright-statement></permissions>", CC_BY, ""),
    ("<permissions><license><license-p>These permissions are granted for the duration of the World Health "
     "Organization (WHO) declaration of COVID-19 as a global pandemic.</license-p></license></permissions>",
     COVID_TIMEBOUND, ""),
    ("<permissions><copyright-statement>All rights reserved.</copyright-statement></permissions>", UNKNOWN, ""),
    ("", UNKNOWN, ""),
    # Two licenses that disagree: the stricter one wins.
    ('<permissions><license xlink:href="https://creativecommons.org/licenses/by/4.0/"/><license>'
     "<ali:license_ref>https://creativecommons.org/licenses/by-nc-nd/4.0/</ali:license_ref></license></permissions>",
     CC_BY_NC_ND, "https://creativecommons.org/licenses/by-nc-nd/4.0/"),
])
def test_license_sources(permissions, license_class, url):
    article = parse_article(legacy_article("106", permissions=permissions))
    assert (article.license, article.license_url) == (license_class, url)


def test_reprinted_figure_keeps_its_own_permissions():
    reprint = "<permissions><copyright-statement>Reprinted with permission from Elsevier.</copyright-statement>" \
              "</permissions>"
    floats = fig("F1", "Figure 1", "<p>Ours.</p>", "g1") + fig("F2", "Figure 2", "<p>Theirs.</p>", "g2", reprint)
    figures = parse_article(legacy_article("107", floats=floats)).figures
    assert [figure.own_license for figure in figures] == [None, UNKNOWN]


# --- Malformed and hostile XML ----------------------------------------------------------------------------


def test_malformed_xml_raises_with_a_short_detail():
    broken = legacy_article("108", body="<p>unclosed")
    with pytest.raises(MalformedArticle, match="XML syntax error") as error:
        parse_article(broken)
    assert len(str(error.value)) <= 200
    assert sniff_pmcid(broken) == "PMC108"
    assert sniff_pmcid(b'<article-id pub-id-type="pmcid">PMC5</article-id') == "PMC5"
    assert sniff_pmcid(b"<article>") == ""
    with pytest.raises(MalformedArticle, match="no <article>"):
        parse_article(b"<html><body/></html>")


def test_entity_expansion_bomb_is_refused():
    start = time.monotonic()
    with pytest.raises(MalformedArticle, match="amplification|entity"):
        parse_article(entity_bomb(levels=10))  # 10^10 "lol"s if expanded
    assert time.monotonic() - start < 5  # a generous bound; expansion would take minutes and gigabytes


def test_small_entities_are_never_expanded():
    figure, = parse_article(entity_bomb(levels=3)).figures
    assert figure.caption == "Bomb here."


def test_external_entities_and_dtds_are_never_fetched(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    xml = (f'<?xml version="1.0"?><!DOCTYPE article SYSTEM "http://127.0.0.1:9/jats.dtd" '
           f'[<!ENTITY leak SYSTEM "file://{secret}">]>'
           '<article><front><article-meta><article-id pub-id-type="pmc">110</article-id></article-meta></front>'
           '<floats-group><fig id="F1"><caption><p>Leak: &leak;</p></caption><graphic/></fig></floats-group>'
           "</article>").encode()
    figure, = parse_article(xml).figures
    assert "TOP-SECRET" not in figure.caption


def test_normalize_pmcid():
    assert [normalize_pmcid(v) for v in ("PMC123", "pmc0123", " 123 ", "12a", "")] == [
        "PMC123", "PMC123", "PMC123", "", ""]
