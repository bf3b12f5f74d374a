"""Translation of TM misses: pure helpers, then `Translator` against a local OpenAI-compatible server."""
from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest

import fakellm
from chimed_pipeline.llm import PROMPT_TOKENS, REQUESTS, SPLITS, LlmClient, LlmConfig, pack_batches
from schemas import Reason, TmKind
from transforms.glossary import load_glossary, parse_glossary
from transforms.translation import (
    CHECK_FAILED,
    CHECK_RETRIES,
    CORRECTIONS_HEADING,
    FAILED,
    PROMPT_VERSION,
    TRANSLATED,
    TranslationItem,
    Translator,
    build_messages,
    check_translation,
    estimate_cost,
    glossary_consistency,
    reply_schema,
)

KEY = fakellm.TEST_KEY
GOOD_SOURCE = "(A) Axial CT of the abdomen showing a 3.5 cm hypodense lesion in the liver (arrow). (B) H&E, ×200."
GOOD_TARGET = "（A）腹部轴位CT显示肝脏内一个3.5 cm的低密度病灶（箭头）。（B）H&E染色，×200。"


# --- pure helpers ---------------------------------------------------------------------------------


def test_batches_respect_both_budgets_and_keep_order():
    texts = ["short caption"] * 10 + ["x" * 4000] + ["another short one"] * 3
    batches = pack_batches(texts, max_items=4, max_tokens=200)
    assert [p for batch in batches for p in batch] == list(range(len(texts)))
    assert all(len(batch) <= 4 for batch in batches)
    assert [10] in batches  # a text over the token budget goes alone
    assert pack_batches([], 4, 200) == []


def test_reply_schema_names_exactly_the_batch_keys():
    schema = reply_schema(["1", "2", "3"])
    assert schema["required"] == ["1", "2", "3"]
    assert schema["properties"] == {k: {"type": "string"} for k in ("1", "2", "3")}
    assert schema["additionalProperties"] is False


def test_prompt_carries_the_rules_the_batch_terms_and_corrections():
    glossary = load_glossary()
    texts = {"1": "Magnetic resonance imaging of the brain.", "2": "Immunohistochemistry of the tumor."}
    terms = [t for text in texts.values() for t in glossary.terms_in(text)]
    system, user = build_messages(texts, terms, {"2": "numbers missing: 5"})
    assert json.loads(user["content"]) == texts
    for rule in ("Simplified Chinese", "(A), (B)", "CT, MRI", "H&E", "BRCA1"):
        assert rule in system["content"]
    assert "magnetic resonance imaging = 磁共振成像" in system["content"]
    assert "immunohistochemistry = 免疫组织化学" in system["content"]
    assert "computed tomography" not in system["content"]  # only the batch's terms
    assert '"2": numbers missing: 5' in system["content"]


@pytest.mark.parametrize(
    "target, problem",
    [
        (GOOD_TARGET.replace("3.5", "3"), "numbers missing: 3.5"),
        (GOOD_TARGET.replace("（B）", ""), "panel labels missing: (B)"),
        ("（A）3.5（B）×200", "too short"),
        (GOOD_TARGET + "The lesion was resected and the patient recovered.", "English left untranslated"),
        ("(A) Axial CT of the abdomen showing a 3.5 cm hypodense lesion (arrow). (B) H&E, ×200.", "not Chinese"),
        ("（A）腹部のCT画像で肝臓に3.5 cmの低吸収域が見られる（矢印）。（B）H&E、×200。", "not Chinese"),
        ("（A）腹部軸位CT顯示肝臟內一個3.5 cm的低密度病灶（箭頭）。（B）H&E染色，×200。", "Traditional"),
        ("", "empty translation"),
    ],
)
def test_checks_name_what_is_wrong(target, problem):
    assert check_translation(GOOD_SOURCE, GOOD_TARGET) == []
    problems = check_translation(GOOD_SOURCE, target)
    assert any(problem in p for p in problems), problems


def test_checks_accept_abbreviation_heavy_and_reformatted_text():
    assert check_translation("CT, MRI and PET/CT images (A–C).", "CT、MRI和PET/CT图像（A–C）。") == []
    assert check_translation("Overall, 1,024 patients were enrolled.", "共纳入1024例患者。") == []
    assert check_translation("Staphylococcus aureus colonies on blood agar.", "血琼脂上的Staphylococcus aureus菌落。") == []


def test_glossary_matches_longest_terms_and_plurals_and_feeds_jieba():
    glossary = load_glossary()
    assert len(glossary) > 150
    terms = [t.en for t in glossary.terms_in("Contrast-enhanced computed tomography showed two nodules.")]
    assert terms == ["contrast-enhanced computed tomography", "nodule"]
    use = glossary.use("CT and magnetic resonance imaging of the liver", "CT和MRI显示肝")
    assert (use.applicable, use.followed) == (2, 2)  # "MRI" is an accepted rendering
    lines = glossary.jieba_userdict_lines()
    assert "磁共振成像 n" in lines and all(" " in line for line in lines)

    import jieba

    tokenizer = jieba.Tokenizer()
    tokenizer.load_userdict(io.BytesIO("\n".join(lines).encode("utf-8")))
    assert "磨玻璃影" in tokenizer.lcut("右肺下叶见磨玻璃影")


def test_glossary_file_format():
    glossary = parse_glossary("# comment\nen\tzh\talso\nscale bar\t比例尺\t标尺|bar\n\nbad line\n")
    [term] = glossary.terms
    assert (term.en, term.zh, term.also) == ("scale bar", "比例尺", ("标尺", "bar"))


# --- against the local server -------------------------------------------------------------------


@pytest.fixture
def fake():
    with fakellm.FakeLlm(slow_s=1.0) as server:
        yield server


def make_translator(fake, **overrides) -> Translator:
    config = fakellm.fast_config(fake, **{"concurrency": 4, "batch_items": 8, **overrides})
    return Translator(LlmClient(config, KEY), config)


def items_for(texts, kind=TmKind.CAPTION):
    return [TranslationItem(f"item-{n:03d}", text, kind) for n, text in enumerate(texts)]


def test_batched_translations_come_back_with_tm_rows(fake):
    translator = make_translator(fake, batch_items=16)
    items = items_for(fakellm.figure_captions(64), TmKind.MENTION)
    results = translator.translate(items)
    assert [r.item_id for r in results] == [i.item_id for i in items]
    assert all(r.target and r.reason is None for r in results)
    assert len(fake.requests) == 4  # 64 captions, 16 a request
    row = results[0].tm_row
    assert (row.source, row.target) == (items[0].text, results[0].target)
    assert (row.kind, row.model, row.prompt_version) == ("mention", "fake-model", PROMPT_VERSION)
    assert translator.counters.get(TRANSLATED) == 64
    assert 0.8 < glossary_consistency(translator.counters) <= 1.0  # the fake keeps most glossary terms
    estimate = estimate_cost([i.text for i in items], translator.config, translator.glossary)
    assert estimate.requests == 4 and estimate.prompt_tokens > 0 and estimate.completion_tokens > 0


def test_every_item_ends_translated_or_failed_with_a_reason_whatever_the_faults(fake, caplog):
    translator = make_translator(fake, max_retries=4)  # even if one request met every transient fault
    texts = fakellm.figure_captions(40, seed=1)
    texts[3] = f"{fakellm.POISON} {texts[3]}"  # a batch holding it never gets a complete reply
    texts[17] = f"{fakellm.UNTRANSLATABLE} the text stays in English for good, whatever we ask."
    texts[25] = f"{fakellm.DROPNUMBER} {texts[25]}"  # numbers dropped until the retry names them
    texts[30] = "   "
    fake.inject(
        fakellm.RATE_LIMIT, fakellm.SERVER_ERROR, fakellm.HTML_BODY, fakellm.MISSING_ID, fakellm.EXTRA_ID,
        fakellm.MERGED_IDS, fakellm.NOT_JSON_CONTENT, fakellm.SLOW, fakellm.TRUNCATED,
    )
    results = translator.translate(items_for(texts))

    assert [r.item_id for r in results] == [f"item-{n:03d}" for n in range(40)]
    for result in results:
        if result.reason is None:
            assert result.target and result.tm_row is not None and result.tm_row.target == result.target
        else:
            assert result.reason in (Reason.TRANSLATION_FAILED, Reason.TRANSLATION_CHECK_FAILED)
            assert not result.target and result.tm_row is None and result.detail
        assert KEY not in result.detail
    failed = {n: r.reason for n, r in enumerate(results) if r.reason}
    assert failed == {
        3: Reason.TRANSLATION_FAILED,
        17: Reason.TRANSLATION_CHECK_FAILED,
        30: Reason.TRANSLATION_FAILED,
    }
    assert "English left untranslated" in results[17].detail
    assert "breaks the schema" in results[3].detail

    counters = translator.counters
    assert counters.get(TRANSLATED) + counters.get(FAILED) + counters.get(CHECK_FAILED) == 40
    assert counters.get(CHECK_RETRIES) == 2  # the English one and the one that dropped numbers
    assert counters.get(SPLITS) >= 3  # the poisoned batch split down to its one bad item
    assert counters.get(REQUESTS) == len(fake.requests)
    # What the client was told it used: every reply it received (not the slow one it gave up on).
    received = [r for r in fake.requests if r.fault != fakellm.SLOW]
    assert counters.get(PROMPT_TOKENS) == sum(r.prompt_tokens for r in received)
    system_prompts = [r.body["messages"][0]["content"] for r in fake.requests]
    assert any(CORRECTIONS_HEADING in p and "numbers missing" in p for p in system_prompts)
    assert KEY not in caplog.text


def test_a_failing_server_fails_the_batch_without_splitting_it(fake):
    translator = make_translator(fake, max_retries=1)
    fake.inject(*[fakellm.SERVER_ERROR] * 2)
    results = translator.translate(items_for(fakellm.figure_captions(8, seed=2)))
    assert {r.reason for r in results} == {Reason.TRANSLATION_FAILED}
    assert all("HTTP 500" in r.detail for r in results)
    assert translator.counters.get(SPLITS) == 0 and len(fake.requests) == 2


def test_dry_run_estimate_matches_the_requests_a_clean_run_makes(fake):
    texts = fakellm.figure_captions(50, seed=3)
    translator = make_translator(fake, batch_items=32, batch_tokens=1500)
    estimate = estimate_cost(texts, translator.config, translator.glossary)
    translator.translate(items_for(texts))
    assert estimate.items == 50 and estimate.requests == len(fake.requests)
    actual = fake.totals()["prompt_tokens"]
    assert 0.5 * actual < estimate.prompt_tokens < 2 * actual


# --- in the pipeline ------------------------------------------------------------------------------


def test_pipeline_translates_tm_misses_and_a_rerun_with_its_tm_pays_nothing(fake, tmp_path, monkeypatch):
    from conftest import run_pipeline

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    llm = ["--llm-model", "fake-model", "--llm-base-url", fake.base_url, "--qa", "template"]
    first = run_pipeline(tmp_path / "first", *llm)
    assert len(fake.requests) == 1  # the bundled sample's TM lacks one caption
    new_rows = [json.loads(line) for line in (first / "tm" / "part-00000.jsonl").read_text().splitlines()]
    [new_row] = [row for row in new_rows if row["model"] == "fake-model"]
    assert new_row["prompt_version"] == PROMPT_VERSION and new_row["kind"] == TmKind.CAPTION.value
    index = pq.read_table(first / "index" / "part-00000.parquet").to_pylist()
    assert not [row for row in index if row["reason"] == Reason.UNTRANSLATED.value]
    assert KEY not in str(index)

    run_pipeline(tmp_path / "second", *llm, "--tm", str(first / "tm" / "part-00000.jsonl"))
    assert len(fake.requests) == 1  # everything came from the first run's TM


def test_dry_run_estimates_and_calls_nothing(monkeypatch):
    from apache_beam.pvalue import TaggedOutput

    from transforms.base import FACTS
    from transforms.translate import DRY_RUN_PREFIX, SlotResult, TextRequest, TranslateMissesFn

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a dry run needs no key
    fn = TranslateMissesFn(LlmConfig(dry_run=True))
    fn.setup()
    texts = fakellm.figure_captions(3, seed=4)
    misses = [[TextRequest(f"r{n}", "caption", text, TmKind.CAPTION.value)] for n, text in enumerate(texts)]
    outputs = list(fn.process(misses))
    facts = dict(o.value for o in outputs if isinstance(o, TaggedOutput) and o.tag == FACTS)
    outputs = [o for o in outputs if not isinstance(o, TaggedOutput)]
    assert [record_id for record_id, _ in outputs] == ["r0", "r1", "r2"]
    assert all(isinstance(r, SlotResult) and r.reason == Reason.UNTRANSLATED and not r.target for _, r in outputs)
    assert fn.counters.snapshot()[f"{DRY_RUN_PREFIX}requests"] == facts[f"{DRY_RUN_PREFIX}requests"] == 1
    fn.teardown()
