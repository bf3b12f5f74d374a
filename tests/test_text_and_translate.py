from __future__ import annotations

from schemas import IndexRow, Reason, Record, TmRow, tm_lookup_key
from transforms.instruct import ALIGNMENT_INSTRUCTIONS, alignment_turns, pick_instruction
from transforms.text import clean_text, detect_language, normalize_conversations, to_simplified
from transforms.tm import parse_tm_lines, tm_jsonl
from transforms.translate import CAPTION_SLOT, SlotResult, apply_results, text_requests


def test_clean_text_keeps_words_apart_and_joins_inline_markup():
    assert clean_text("T<sub>4</sub> in <i>males</i><br/>and&nbsp;H&amp;E\u200b stain ") == "T4 in males and H&E stain"


def test_language_detection_is_deterministic():
    english = "Axial CT of the chest shows a nodule in the right upper lobe."
    assert {detect_language(english) for _ in range(5)} == {"en"}
    assert detect_language("胸部CT示右上肺结节 (arrow)") == "zh"
    assert detect_language("12 (A) 3.5") == ""


def test_traditional_to_simplified():
    assert to_simplified("膝關節X光片顯示骨贅") == "膝关节X光片显示骨赘"


def test_conversations_keep_one_image_token_first():
    turns = normalize_conversations([
        {"from": "human", "value": "What is shown?\n<image>"}, {"from": "gpt", "value": "A <b>CT</b>."},
        {"from": "human", "value": "<image>\nWhere?"}, {"from": "gpt", "value": "Chest."},
    ])
    assert turns[0]["value"] == "<image>\nWhat is shown?" and turns[2]["value"] == "Where?"
    assert turns[1]["value"] == "A CT."


def test_tm_key_normalizes_and_first_row_wins_in_file_order():
    assert tm_lookup_key("CT  of the\nchest", "zh", "caption") == tm_lookup_key("CT of the chest", "zh", "caption")
    assert tm_lookup_key("CT", "zh", "caption") != tm_lookup_key("CT", "zh", "mention")
    rows = list(parse_tm_lines(['{"source": "a", "target": "甲"}', "not json", '{"source": "b"}', '{"source": "a", "target": "乙"}']))
    assert [(n, r.target) for n, r in rows] == [(1, "甲"), (4, "乙")]
    assert tm_jsonl([TmRow("b", "乙"), TmRow("a", "甲")]) == tm_jsonl([TmRow("a", "甲"), TmRow("b", "乙")])


def test_apply_results_rejects_untranslated_caption_and_drops_untranslated_mentions():
    record = Record(id="r", caption_en="A CT.", inline_mentions_en=["m0", "m1"])
    assert [r.slot for r in text_requests(record)] == [CAPTION_SLOT, "mention:0", "mention:1"]
    done = apply_results(record, [SlotResult(CAPTION_SLOT, "一张CT。"), SlotResult("mention:1", "提及")])
    assert done.caption_zh == "一张CT。" and done.inline_mentions_zh == ["提及"]
    rejected = apply_results(record, [SlotResult(CAPTION_SLOT, reason=Reason.UNTRANSLATED, detail="no TM")])
    assert isinstance(rejected, IndexRow) and rejected.reason == Reason.UNTRANSLATED.value


def test_alignment_instruction_is_deterministic_and_varied():
    assert len(set(ALIGNMENT_INSTRUCTIONS)) >= 10
    assert pick_instruction("PMC1_F1") == pick_instruction("PMC1_F1")
    assert len({pick_instruction(f"k{n}") for n in range(200)}) == len(ALIGNMENT_INSTRUCTIONS)
    turns = alignment_turns(Record(id="x", caption_zh="图注"))
    assert turns[0]["value"].startswith("<image>\n") and turns[1] == {"from": "gpt", "value": "图注"}
