"""RegML (the CFPB's eRegulations XML) to documents: one per section, per interpretation section
and per appendix section, citation labels kept as metadata.

The reader walks the element tree instead of following fixed paths, so sections inside subparts,
directly under the part's content or anywhere else all read the same way, and unknown elements
contribute their text rather than being dropped. Not read: the table of contents (it repeats
headings) and <analysis> (rule-making preamble, not regulation text).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

_SKIP = {"tableOfContents", "analysis", "fdsys", "preamble"}
_PARAGRAPHS = {"paragraph", "interpParagraph"}
_HEADINGS = {"subject", "title", "appendixTitle", "heading"}
_INLINE_BREAKS = {"table", "paragraph", "interpParagraph"}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _child(el: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in el if _local(c.tag) == name), None)


def _path_text(root: ET.Element, *names: str) -> str:
    """Text of the first element reached by the path of local names, or ""."""
    el = root
    for name in names:
        el = _child(el, name) if el is not None else None
    return " ".join("".join(el.itertext()).split()) if el is not None else ""


def _inline(el: ET.Element) -> str:
    """All text of an element on one line (references, definitions and emphasis inline)."""
    return " ".join("".join(el.itertext()).split())


def _table(el: ET.Element) -> list[str]:
    rows = [r for r in el.iter() if _local(r.tag) in ("row", "columnHeaderRow")]
    return [" | ".join(_inline(c) for c in row) for row in rows]


def _lines(el: ET.Element, out: list[str]) -> None:
    """Readable lines of an element: marker + keyterm + content per paragraph, tables by row."""
    tag = _local(el.tag)
    if tag in _SKIP:
        return
    if tag in _PARAGRAPHS:
        title, content = _child(el, "title"), _child(el, "content")
        parts = (el.get("marker", ""), _inline(title) if title is not None else "",
                 _inline(content) if content is not None else "")
        head = " ".join(x for x in parts if x)
        if head:
            out.append(head)
        for child in el:
            if _local(child.tag) not in ("title", "content"):
                _lines(child, out)
    elif tag == "table":
        out.extend(_table(el))
    elif tag in _HEADINGS or tag == "content" or not len(el):
        if text := _inline(el):
            out.append(text)
    else:
        if el.text and el.text.strip():
            out.append(" ".join(el.text.split()))
        for child in el:
            _lines(child, out)


def _citation(part: str, label: str, kind: str, cfr_title: str) -> str:
    """'12 CFR 1002.1' for section 1002-1; Supplement I / appendix wording for the others."""
    rest = label[len(part) + 1:] if label.startswith(f"{part}-") else label
    if kind == "section":
        return f"{cfr_title} CFR {part}.{rest.split('-')[0]}"
    if kind == "interpretation":
        section = rest.removesuffix("-Interp")
        where = (section if "Interp" in section else f"comments to Appendix {section}"
                 if section.isalpha() else f"comments to § {part}.{section}")
        return f"{cfr_title} CFR part {part}, Supplement I, {where}"
    return f"{cfr_title} CFR part {part}, Appendix {rest.split('-')[0]}"


def _heading(el: ET.Element) -> str:
    return next((_inline(c) for c in el if _local(c.tag) in _HEADINGS), "")


def _units(el: ET.Element, context: str = "", in_interp: bool = False
           ) -> Iterator[tuple[str, ET.Element, str]]:
    """(kind, element, enclosing heading) of every document-sized unit, never nested twice."""
    tag = _local(el.tag)
    if tag in _SKIP:
        return
    if tag == "section" and not in_interp:
        yield "section", el, context
    elif tag == "interpSection":
        yield "interpretation", el, context
    elif tag == "appendixSection" or (
            tag == "appendix" and not any(_local(c.tag) == "appendixSection" for c in el)):
        yield "appendix", el, context
    else:
        inner = _heading(el) if tag in ("appendix", "interpretations") else context
        for child in el:
            yield from _units(child, inner, in_interp or tag == "interpretations")


def parse(data: bytes, uri: str) -> list[dict]:
    """Documents {doc_id, kind, text, meta} of one RegML file; raises ET.ParseError if the XML
    is malformed and ValueError if it is well-formed but not a regulation."""
    root = ET.fromstring(data)
    if _local(root.tag) != "regulation":
        raise ValueError(f"root element is <{_local(root.tag)}>, not <regulation>")
    part_el = next((e for e in root.iter() if _local(e.tag) == "part"), None)
    part = (part_el.get("label") if part_el is not None else None) or \
        _path_text(root, "preamble", "cfr", "section")
    cfr_title = _path_text(root, "preamble", "cfr", "title") or _path_text(root, "fdsys",
                                                                          "cfrTitleNum")
    letter = _path_text(root, "preamble", "regLetter")
    common = {"regulation": f"Regulation {letter}" if letter else "", "part": part,
              "cfr_title": cfr_title, "title": _path_text(root, "fdsys", "title"),
              "document_number": _path_text(root, "preamble", "documentNumber"),
              "effective_date": _path_text(root, "preamble", "effectiveDate"), "file": uri}
    docs = []
    for kind, el, context in _units(root):
        label = el.get("label") or f"{part}-{kind}-{len(docs)}"
        lines: list[str] = [context] if context else []
        _lines(el, lines)
        labels = [e.get("label") for e in el.iter() if e.get("label") and e is not el]
        targets = sorted({e.get("target") for e in el.iter()
                          if e.get("target") and _local(e.tag) == "interpParagraph"})
        docs.append({
            "doc_id": f"reg-{label}", "kind": f"regulation_{kind}", "text": "\n".join(lines),
            "meta": {**common, "label": label, "unit": kind,
                     "citation": _citation(part, label, kind, cfr_title),
                     "heading": _heading(el), "context": context, "paragraph_labels": labels,
                     "interprets": targets},
        })
    return docs
