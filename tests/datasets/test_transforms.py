"""Corpus transforms on hand-made batches: validate, normalise, quality, tokenize, mix, pack."""

import random

import numpy as np
import pytest

from mortgagellm.datasets import mortgage, transforms
from tests.reference import legacy


def raw(texts, rejects=None):
    n = len(texts)
    return {"text": list(texts), "reject": list(rejects or [""] * n), "snippet": [""] * n,
            "order": np.arange(n, dtype=np.int64)}


# --- validate --------------------------------------------------------------------------------


def test_validate_rejects_empty_and_oversized_and_keeps_reader_rejects():
    batch = transforms.validate(raw(["fine text", "  \n\t", "x" * 11, "", "ok"],
                                    ["", "", "", "invalid_json", ""]), max_chars=10)
    assert batch["reject"] == ["", "empty_text", "oversized", "invalid_json", ""]
    # Rejected rows lose their text (nothing downstream may train on them) but keep a snippet.
    assert batch["text"] == ["fine text", "", "", "", "ok"]
    assert batch["snippet"][2] == "x" * 11 and batch["snippet"][0] == ""


def test_validate_snippet_is_cut_to_snippet_chars():
    batch = transforms.validate(raw(["y" * 1000]), max_chars=500)
    assert batch["snippet"] == ["y" * transforms.SNIPPET_CHARS]


# --- normalise -------------------------------------------------------------------------------


def test_repair_mojibake_restores_utf8_read_as_cp1252():
    assert transforms.repair_mojibake("RenÃ©e") == "Renée"
    assert transforms.repair_mojibake("the borrowerâ€™s loan â€” approved") == \
        "the borrower’s loan — approved"
    # Curly quotes are kept (uncurl_quotes off): they are correct text, not damage.
    assert transforms.repair_mojibake("Plain ASCII and real é and ’") == \
        "Plain ASCII and real é and ’"
    # Looks like a mangled run, but its bytes (ED A0 80, a UTF-16 surrogate) are not UTF-8.
    assert transforms.repair_mojibake("í\u00a0€ stays") == "í\u00a0€ stays"
    # Entities are left for strip_html, which decodes them after parsing the markup.
    assert transforms.repair_mojibake("&lt;b&gt; cafÃ©") == "&lt;b&gt; café"


def test_repair_mojibake_goes_beyond_the_old_cp1252_inversion():
    # ftfy also repairs what the inversion left: a closing quote whose last byte (0x9D) cp1252
    # leaves undefined, ligatures, full-width letters.
    assert transforms.repair_mojibake("â€œquotedâ€\x9d") == "“quoted”"
    assert legacy.repair_mojibake("â€œquotedâ€\x9d") == "“quoted”"
    assert transforms.repair_mojibake("ﬁle ＡＢＣ") == "file ABC"
    assert legacy.repair_mojibake("ﬁle ＡＢＣ") == "ﬁle ＡＢＣ"


def test_repair_mojibake_inverts_the_generators_mojibake_on_every_text():
    texts = [r["text"] for r in mortgage.generate(3, 0, 300, noise=False)]
    garbled = [mortgage.mojibake(t) for t in texts]
    assert sum(g != t for g, t in zip(garbled, texts)) > 30  # the check has cases to bite on
    assert [transforms.repair_mojibake(g) for g in garbled] == texts
    assert [legacy.repair_mojibake(g) for g in garbled] == texts


def test_strip_html_drops_scripts_styles_comments_and_tags_and_decodes_entities():
    page = ('<div class="m"><script>var a = 1;</script><style>p{}</style><!-- pixel -->'
            "<p>Rate &amp; points<br>Line two</p><p>5 &lt; 6&nbsp;</p></div>")
    # </p> and </div> each end a block: "\n\n" (normalise_whitespace folds the blank lines).
    assert transforms.strip_html(page) == "Rate & points\nLine two\n\n5 < 6\u00a0\n\n\n\n"
    assert transforms.strip_html(page) == legacy.strip_html(page)
    assert transforms.strip_html("LTV < 80% & DTI > 43%") == "LTV < 80% & DTI > 43%"


@pytest.mark.parametrize("page, text, regex_text", [
    # ">" inside a quoted attribute: the tag regex ended the tag there and leaked the rest.
    ('<a href="/rates?x>1" title="a>b">Today\'s rates</a> apply',
     "Today's rates apply", '1" title="a>b">Today\'s rates apply'),
    # An unclosed tag at the end: dropped, as browsers do; the regex kept it as text.
    ("<p>Escrow is due<br", "Escrow is due\n\n", "Escrow is due<br"),
    # A tag opened inside another tag's name: the parser reads "<div<p" as one element.
    ("Rate <div<p>5%</p>", "Rate 5%\n\n", "Rate <div5%\n\n"),
    # Unclosed elements, an unterminated comment, table cells: cells were glued together.
    ("<ul><li>one<li>two</ul><!-- never closed", "one\n\ntwo\n\n\n\n",
     "onetwo\n\n<!-- never closed"),
    ("<table><tr><td>LTV</td><td>80%</td></tr></table>", "LTV 80% \n\n\n\n",
     "LTV80%\n\n\n\n"),
])
def test_strip_html_parses_malformed_markup_as_a_browser_does(page, text, regex_text):
    assert transforms.strip_html(page) == text
    assert legacy.strip_html(page) == regex_text  # what the replaced regexes made of it


def test_normalise_whitespace():
    text = "\ufeffTitle  \r\n\r\n\r\n\r\nBody\u00a0text\twith\u200b  gaps \n\n\n end\x07 "
    assert transforms.normalise_whitespace(text) == "Title\n\nBody text with gaps\n\nend"
    assert transforms.normalise_whitespace("e\u0301") == "é"  # NFC


def test_normalise_batch_flags_what_changed():
    batch = transforms.normalise(raw(["cafÃ©", "<p>x</p>", "plain"]))
    assert batch["text"] == ["café", "x", "plain"]
    assert batch["mojibake_repaired"].tolist() == [True, False, False]
    assert batch["html_stripped"].tolist() == [False, True, False]


def test_normalise_recovers_the_clean_text_of_html_noise():
    rng = random.Random(0)
    for r in mortgage.generate(5, 0, 100, noise=False):
        noisy = mortgage.htmlify(rng, r["text"])
        assert transforms.normalise(raw([noisy]))["text"][0] == \
            transforms.normalise_whitespace(r["text"])


# --- quality ---------------------------------------------------------------------------------

LIMITS = {"min_words": 4, "max_symbol_fraction": 0.5, "max_repeated_line_fraction": 0.5}


@pytest.mark.parametrize("text, reason", [
    ("Escrow analysis is due yearly.", ""),
    ("Too short here", "too_short"),
    # 14 visible characters, 8 of them neither letter nor digit: 0.57 > 0.5
    ("|--| ab |--| cd ef", "symbols"),
    # 4 lines, 3 repeat the first: 0.75 > 0.5
    ("menu item here\nmenu item here\nmenu item here\nmenu item here", "repetitive"),
    ("The payment is \ufffd\ufffd due now", "garbled"),
])
def test_quality_reason(text, reason):
    assert transforms.quality_reason(text, **LIMITS) == reason


def test_quality_skips_rejected_rows_and_keeps_a_snippet_of_failures():
    batch = transforms.quality(raw(["one two", "", "four words are enough"],
                                   ["", "empty_text", ""]), **LIMITS)
    assert batch["quality"] == ["too_short", "", ""]
    assert batch["snippet"] == ["one two", "", ""]


# --- tokenize --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from mortgagellm.modeling import train_tokenizer

    texts = [r["text"] for r in mortgage.generate(1, 0, 200, noise=False)]
    return train_tokenizer(texts, 400)


def test_tokenize_wraps_each_document_in_bos_and_eos(tokenizer):
    out = transforms.tokenize({"text": ["Escrow shortage", "Late fee"]},
                              tokenizer.backend_tokenizer, 1, 2)
    ids = out["input_ids"][0]
    assert ids.dtype == np.int32 and ids[0] == 1 and ids[-1] == 2
    assert tokenizer.decode(ids[1:-1].tolist()) == "Escrow shortage"
    assert tokenizer.decode(out["input_ids"][1][1:-1].tolist()) == "Late fee"
    assert out["n_tokens"].tolist() == [len(ids), len(out["input_ids"][1])]


# --- select --------------------------------------------------------------------------------


def test_select_drops_the_listed_orders():
    batch = {"order": np.array([5, 1, 9, 3]), "source": ["a", "b", "c", "d"]}
    out = transforms.select(batch, np.array([3, 5]))
    assert out["order"].tolist() == [1, 9] and out["source"] == ["b", "c"]
    assert transforms.select(batch, np.array([], np.int64))["source"] == ["a", "b", "c", "d"]


# --- mix -------------------------------------------------------------------------------------


def test_repeats_whole_weights_and_fractions():
    order = np.arange(10_000)
    assert (transforms.repeats(order, 2.0, salt=1) == 2).all()
    assert (transforms.repeats(order, 0.0, salt=1) == 0).all()
    half = transforms.repeats(order, 1.5, salt=1)
    assert set(half.tolist()) == {1, 2} and abs((half == 2).mean() - 0.5) < 0.02
    assert (half == transforms.repeats(order, 1.5, salt=1)).all()  # deterministic


def test_mix_repeats_rows_per_source_weight():
    batch = {"order": np.array([10, 11, 12]), "source": ["synthetic", "regulations", "user"],
             "input_ids": [np.array([1]), np.array([2]), np.array([3])]}
    out = transforms.mix(batch, {"synthetic": 1.0, "regulations": 3.0, "user": 0.0}, salt=0)
    assert out["order"].tolist() == [10, 11, 11, 11]
    assert [a.tolist() for a in out["input_ids"]] == [[1], [2], [2], [2]]
    assert out["source"] == ["synthetic", "regulations", "regulations", "regulations"]


# --- pack ------------------------------------------------------------------------------------


def test_pack_cuts_concatenated_documents_into_rows_with_segment_ids():
    docs = [np.array([1, 2, 3]), np.array([4, 5]), np.array([6, 7, 8, 9]), np.array([], np.int32)]
    out = transforms.pack({"input_ids": docs}, seq_len=4, pad_id=0)
    assert [r.tolist() for r in out["input_ids"]] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 0, 0, 0]]
    # Row 2 starts inside document 2 (its tail) and holds document 3; padding is segment 0.
    assert [r.tolist() for r in out["segment_ids"]] == [[1, 1, 1, 2], [1, 2, 2, 2], [1, 0, 0, 0]]


def test_pack_exact_fit_has_no_padding_and_empty_batch_gives_no_rows():
    out = transforms.pack({"input_ids": [np.arange(1, 5), np.arange(5, 9)]}, seq_len=4, pad_id=0)
    assert [r.tolist() for r in out["segment_ids"]] == [[1, 1, 1, 1], [1, 1, 1, 1]]
    assert transforms.pack({"input_ids": []}, seq_len=4, pad_id=0) == \
        {"input_ids": [], "segment_ids": []}
