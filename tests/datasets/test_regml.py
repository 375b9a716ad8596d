"""RegML reader: the three CFPB regulations in data/ (vendored), and a hand-written regulation
laid out differently, read into one document per section, interpretation and appendix section."""

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from mortgagellm.datasets import regml

CORPORA = Path(__file__).resolve().parents[2] / "data" / "cfpb-regulations"
FILES = sorted(CORPORA.glob("*.xml"))

# Another part, laid out unlike the three real files: no subparts (the section sits directly
# under <content>), an appendix without appendixSections, a table, an element the reader does
# not know, and interpretations nested one level deeper than usual.
SNIPPET = b"""<?xml version='1.0' encoding='UTF-8'?>
<regulation xmlns="eregs">
  <fdsys><cfrTitleNum>12</cfrTitleNum><title>HOME TEST ACT</title></fdsys>
  <preamble><regLetter>Q</regLetter><cfr><title>12</title><section>1099</section></cfr>
    <documentNumber>2030-00001</documentNumber><effectiveDate>2030-01-01</effectiveDate></preamble>
  <part label="1099">
    <tableOfContents><tocSecEntry target="1099-1"><sectionSubject>Ignored</sectionSubject>
    </tocSecEntry></tableOfContents>
    <content>
      <section label="1099-1" sectionNum="1">
        <subject>&#167; 1099.1 Scope.</subject>
        <paragraph label="1099-1-a" marker="(a)">
          <title type="keyterm">General.</title>
          <content>This part applies to every <ref target="1099-1-b">lender</ref>.</content>
          <paragraph label="1099-1-a-1" marker="(1)"><content>First rule.</content></paragraph>
        </paragraph>
        <note>An element no schema lists.</note>
        <table><row><cell>Fee</cell><cell>$10</cell></row></table>
      </section>
      <appendix appendixLetter="A" label="1099-A">
        <appendixTitle>Appendix A to Part 1099&#8212;Model Form</appendixTitle>
        <paragraph label="1099-A-p1"><content>Form text.</content></paragraph>
      </appendix>
      <supplement>
        <interpretations label="1099-Interp">
          <title>Supplement I to Part 1099&#8212;Official Interpretations</title>
          <interpSection label="1099-1-Interp" sectionNum="1">
            <title>Section 1099.1&#8212;Scope</title>
            <interpParagraph label="1099-1-a-Interp-1" target="1099-1-a" marker="1.">
              <content>Lender includes a broker.</content>
            </interpParagraph>
          </interpSection>
        </interpretations>
      </supplement>
    </content>
  </part>
  <analysis><analysisSection target="1099-1"><title>Preamble</title></analysisSection></analysis>
</regulation>
"""


def test_hand_written_regulation_reads_into_exact_documents():
    docs = {d["doc_id"]: d for d in regml.parse(SNIPPET, "mem://q.xml")}
    assert list(docs) == ["reg-1099-1", "reg-1099-A", "reg-1099-1-Interp"]
    section = docs["reg-1099-1"]
    assert section["kind"] == "regulation_section"
    assert section["text"] == ("§ 1099.1 Scope.\n(a) General. This part applies to every lender.\n"
                               "(1) First rule.\nAn element no schema lists.\nFee | $10")
    assert section["meta"]["citation"] == "12 CFR 1099.1"
    assert section["meta"]["paragraph_labels"] == ["1099-1-a", "1099-1-a-1"]
    assert section["meta"]["regulation"] == "Regulation Q"
    assert section["meta"]["effective_date"] == "2030-01-01"
    appendix = docs["reg-1099-A"]
    assert appendix["text"] == "Appendix A to Part 1099—Model Form\nForm text."
    assert appendix["meta"]["citation"] == "12 CFR part 1099, Appendix A"
    interp = docs["reg-1099-1-Interp"]
    assert interp["text"] == ("Supplement I to Part 1099—Official Interpretations\n"
                              "Section 1099.1—Scope\n1. Lender includes a broker.")
    assert interp["meta"]["interprets"] == ["1099-1-a"]
    assert interp["meta"]["citation"] == "12 CFR part 1099, Supplement I, comments to § 1099.1"
    assert "Ignored" not in "".join(d["text"] for d in docs.values())  # no table of contents


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_real_regulations_read_one_document_per_unit(path):
    docs = regml.parse(path.read_bytes(), str(path))
    part_el = ET.parse(path).getroot().find("{eregs}part")
    sections = list(part_el.iter("{eregs}section"))  # (the preamble's <cfr><section> is a number)
    interp_sections = list(part_el.iter("{eregs}interpSection"))
    kinds = Counter(d["kind"] for d in docs)
    assert kinds["regulation_section"] == len(sections)
    assert kinds["regulation_interpretation"] == len(interp_sections)
    assert kinds["regulation_appendix"] >= 1
    assert len({d["doc_id"] for d in docs}) == len(docs)
    part = part_el.get("label")
    for d in docs:
        assert d["meta"]["part"] == part and d["meta"]["label"].startswith(part)
        assert d["meta"]["citation"].startswith(f"12 CFR {part}") or \
            d["meta"]["citation"].startswith(f"12 CFR part {part}")
        assert d["text"].strip() and "<" not in d["text"][:1]
    section_docs = [d for d in docs if d["kind"] == "regulation_section"]
    assert all(d["text"].startswith("§") for d in section_docs)
    assert any("\n(a) " in d["text"] for d in section_docs)  # paragraph markers kept


def test_real_regulation_keeps_citation_labels_as_metadata():
    path = next(p for p in FILES if "1002" in p.name)
    docs = {d["doc_id"]: d for d in regml.parse(path.read_bytes(), str(path))}
    b1 = docs["reg-1002-1"]
    assert b1["meta"]["citation"] == "12 CFR 1002.1"
    assert b1["meta"]["heading"] == "§ 1002.1 Authority, scope and purpose."
    assert {"1002-1-a", "1002-1-b"} <= set(b1["meta"]["paragraph_labels"])
    assert "(a) Authority and scope. This part, known as Regulation B," in b1["text"]
    assert "1002-1-a" in docs["reg-1002-1-Interp"]["meta"]["interprets"]


def test_malformed_and_foreign_xml_raise():
    with pytest.raises(ET.ParseError):
        regml.parse(b"<regulation><part>", "bad.xml")
    with pytest.raises(ValueError, match="not <regulation>"):
        regml.parse(b"<html><body/></html>", "page.xml")
