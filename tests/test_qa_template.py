"""The offline QA template generator on real captions (read by path from ../shared/samples) and on
captions written here: modality / anatomy / view / stain detection, grounding, determinism."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree

from conftest import SHARED_SAMPLES
from schemas.records import GPT, HUMAN, IMAGE_TOKEN
from transforms.qa_llm import QaSource, turn_problems
from transforms.qa_pairs import QaPair, conversation_pairs, llava_conversation
from transforms.qa_template import (
    ANATOMY,
    CATEGORIES,
    MAX_PAIRS,
    MODALITY,
    STAIN,
    VIEW,
    concepts,
    detect_facts,
    detect_modality,
    LEXICON_PATH,
    load_lexicon,
    template_qa,
)

LLAVA_MED = Path("llava_med") / "llava_med_eval_qa50_qa.jsonl"


def _llava_med_captions(samples: Path) -> dict[str, tuple[str, dict]]:
    """pair_id -> (fig_caption, domain flags), one per figure."""
    captions = {}
    for line in (samples / LLAVA_MED).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        captions.setdefault(row["pair_id"], (row["fig_caption"], row["domain"]))
    return captions


def _jats_captions(samples: Path) -> dict[str, str]:
    """"file:fig id" -> caption text (title and paragraphs, whitespace collapsed)."""
    captions = {}
    for path in sorted((samples / "jats").glob("*ml")):
        for fig in etree.parse(str(path)).iter("{*}fig", "fig"):
            caption = next(iter(fig.iter("{*}caption", "caption")), None)
            if caption is not None:
                captions[f"{path.name}:{fig.get('id')}"] = " ".join("".join(caption.itertext()).split())
    return captions


@pytest.fixture(scope="module")
def samples_dir() -> Path:
    if not SHARED_SAMPLES.is_dir():
        pytest.skip(f"../shared/samples not found at {SHARED_SAMPLES} (only in the team's checkouts)")
    return SHARED_SAMPLES


@pytest.fixture(scope="module")
def real_captions(samples_dir) -> dict[str, str]:
    captions = {key: caption for key, (caption, _) in _llava_med_captions(samples_dir).items()}
    captions.update(_jats_captions(samples_dir))
    return captions


def _qa(key: str, caption: str) -> dict[str, str]:
    return {pair.question: pair.answer for pair in template_qa(key, caption)}


def test_pet_ct_caption(real_captions):
    key = "PMC10777901.xml:cancers-16-00233-f001"
    facts = detect_facts(real_captions[key])
    assert facts.primary_modality.id == "pet_ct"
    assert [m.id for m in facts.modalities] == ["pet_ct"]  # the colonoscopy is the patient's history
    answers = list(_qa(key, real_captions[key]).values())
    assert answers[0] == "这是一张PET/CT影像。"
    assert any("结直肠" in a for a in answers)


def test_histology_caption_gives_stain_and_magnification(real_captions):
    key = "18063892_F3"  # "... (H & E stain, ×100)"
    facts = detect_facts(real_captions[key])
    assert facts.primary_modality.id == "histology"
    assert [s.id for s in facts.stains] == ["he"]
    assert facts.magnifications == ("×100",)
    answers = set(_qa(key, real_captions[key]).values())
    assert "采用的是苏木精-伊红（H&E）染色。" in answers and "放大倍数为×100。" in answers


def test_multi_panel_histology_lists_each_magnification(real_captions):
    facts = detect_facts(real_captions["29805352_F2"])
    assert facts.magnifications == ("×200", "×100", "×600")
    sizes = detect_facts(real_captions["29563712_F5"])  # "2.5 cm × 2.5 cm × 1.3 cm" is a size
    assert sizes.magnifications == ()


def test_ct_caption_gives_view_contrast_and_finding(real_captions):
    key = "20733967_F3"  # contrast-enhanced pelvic CT, aneurysm, transverse view
    facts = detect_facts(real_captions[key])
    assert facts.primary_modality.id == "ct"
    assert [v.id for v in facts.views] == ["axial"]
    assert [f.id for f in facts.findings] == ["aneurysm"]
    answers = set(_qa(key, real_captions[key]).values())
    assert {"这是一张CT影像。", "这是轴位图像。", "是的，这是增强扫描图像。", "图中可见动脉瘤。"} <= answers


@pytest.mark.parametrize("key", ["1471-2180-11-174.nxml:F3", "1471-2180-11-174.nxml:F4", "PMC10653940.xml:F2"])
def test_plots_are_charts_and_get_no_anatomy_or_finding_questions(real_captions, key):
    facts = detect_facts(real_captions[key])
    assert facts.primary_modality.id == "chart"
    assert list(_qa(key, real_captions[key]).values()) == ["这是一张统计图表。"]


def test_chart_named_in_the_caption_beats_the_modalities_it_summarizes(real_captions):
    assert detect_modality(real_captions["24614132_pone-0091649-g004"]) == "chart"  # PET/CT and DCE-MRI metrics
    assert detect_modality(real_captions["32418875_fig1"]) == "diagram"  # a clinical pathway naming CXR, ECG


def test_negated_and_hedged_findings(real_captions):
    facts = detect_facts(real_captions["31404134_F5"])  # "... showed no pleural effusion"
    assert [f.id for f in facts.absent_findings] == ["pleural_effusion"] and not facts.findings
    assert _qa("31404134_F5", real_captions["31404134_F5"])["图中是否可见胸腔积液？"] == "未见胸腔积液。"
    listed = detect_facts(real_captions["22223938_F5"])  # "without any areas of hemorrhage or necrosis"
    assert {f.id for f in listed.absent_findings} == {"hemorrhage", "necrosis"}
    assert [f.id for f in listed.findings] == ["mass"]
    hedged = detect_facts("Chest CT showing a suspected pulmonary nodule.")
    assert not hedged.findings and not hedged.absent_findings


def test_molecular_mass_is_not_a_finding(real_captions):
    key = "pone.0046493.nxml:pone-0046493-g003"  # "mass spectrometry", "global mass modifications"
    assert not detect_facts(real_captions[key]).findings
    assert template_qa(key, real_captions[key]) == []


def test_every_answer_on_real_captions_passes_the_llm_turn_checks(real_captions):
    """Grounding: no number, Latin term or modality/view/stain concept the caption does not name."""
    pairs = 0
    for key, caption in real_captions.items():
        qa = template_qa(key, caption)
        assert len(qa) <= MAX_PAIRS and len({p.question for p in qa}) == len(qa)
        for pair in qa:
            assert turn_problems(pair, QaSource(key, caption)) == [], (key, pair)
            pairs += 1
        answered = set().union(set(), *(concepts(p.answer, CATEGORIES) for p in qa))
        assert answered <= concepts(caption, CATEGORIES, expand=True), key  # anatomy and findings too
    assert pairs > 100


def test_modality_agrees_with_llava_med_domain_labels(samples_dir):
    expected = {"ct_scan": {"ct", "cta", "spect", "pet_ct", "angiography"}, "mri": {"mri"}, "chest_xray": {"x_ray"},
                "histology": {"histology", "immunohistochemistry", "microscopy"}, "gross": {"gross"}}
    labelled = [(caption, [d for d, on in domain.items() if on])
                for caption, domain in _llava_med_captions(samples_dir).values()]
    single = [(caption, domains[0]) for caption, domains in labelled if len(domains) == 1]
    agree = sum(detect_modality(caption) in expected[domain] for caption, domain in single)
    assert len(single) >= 40 and agree / len(single) >= 0.8, f"{agree}/{len(single)}"


def test_output_is_deterministic_and_seeded_only_by_the_record_id(real_captions):
    caption = real_captions["30984437_fig2"]
    first = template_qa("a", caption)
    assert template_qa("a", caption) == first
    other = template_qa("b", caption)
    assert [p.answer for p in other] == [p.answer for p in first]  # wording may vary, facts do not
    questions = {p.question for key in map(str, range(40)) for p in template_qa(key, caption)}
    assert len(questions) > len(first)  # several phrasings are in use


def test_chinese_caption_terms_are_found_with_jieba():
    caption_zh = "胸部CT平扫显示右肺上叶磨玻璃影，未见胸腔积液。"
    facts = detect_facts("", caption_zh)
    assert facts.primary_modality.id == "ct"
    assert [c.id for c in facts.contrast] == ["plain"]
    assert [f.id for f in facts.findings] == ["ggo"] and [f.id for f in facts.absent_findings] == ["pleural_effusion"]
    assert {a.id for a in facts.anatomy} >= {"lung"}
    qa = {p.question: p.answer for p in template_qa("x", "", caption_zh)}
    assert "不是，这是平扫图像。" in qa.values()
    assert detect_modality("", "肝素治疗后复查") == ""  # 肝 inside 肝素 (heparin) is not the liver
    assert not detect_facts("", "肝素治疗后复查").anatomy


def test_stated_clause_is_quoted_from_the_chinese_caption():
    qa = template_qa("y", "", "腹部超声提示胆囊结石（箭头）。")
    assert qa[-1].answer == "图中提示胆囊结石。"
    summary = template_qa("z", "", "四组患者的生存曲线。")
    assert [p.answer for p in summary] == ["这是一张生存曲线图。", "四组患者的生存曲线。"]


def test_stain_implies_the_modality_when_none_is_named():
    facts = detect_facts("Liver biopsy, H&E, original magnification x400.")
    assert facts.primary_modality.id == "histology" and facts.magnifications == ("×400",)
    assert detect_modality("Immunohistochemistry for CD20 (×200).") == "immunohistochemistry"


def test_nothing_named_means_no_questions():
    assert template_qa("n", "Effects of timing on lysis.") == []
    assert detect_modality("") == ""


def test_llava_conversation_form():
    turns = llava_conversation([QaPair("这是什么类型的影像？", "这是一张CT影像。"), QaPair("部位？", "胸部。")])
    assert [t["from"] for t in turns] == [HUMAN, GPT, HUMAN, GPT]
    assert turns[0]["value"] == f"{IMAGE_TOKEN}\n这是什么类型的影像？"
    assert sum(IMAGE_TOKEN in t["value"] for t in turns) == 1
    assert conversation_pairs(turns) == [QaPair("这是什么类型的影像？", "这是一张CT影像。"), QaPair("部位？", "胸部。")]
    unanswered = [{"from": HUMAN, "value": "Q1 <image>"}, {"from": HUMAN, "value": "Q2"}, {"from": GPT, "value": "A2"}]
    assert conversation_pairs(unanswered) == [QaPair("Q2", "A2")]


def test_every_lexicon_answer_is_grounded_by_each_of_its_own_phrases():
    """A name the templates answer with must pass the LLM checks against any phrase that found it."""
    data = json.loads(LEXICON_PATH.read_text(encoding="utf-8"))
    for category in (MODALITY, ANATOMY, VIEW, STAIN, "sequence", "contrast", "finding"):
        for entry in data[category]:
            for phrase in entry["en"] + entry["zh"]:
                answer = QaPair("这是什么？", f"这是{entry['name']}。")
                assert turn_problems(answer, QaSource("x", phrase)) == [], (category, entry["id"], phrase)
    lexicon = load_lexicon()
    for modality_id, implied in lexicon.subsumes.items():
        assert modality_id in lexicon.generic_modality and implied <= set(lexicon.generic_modality)
