"""What every renderer shares: how figures, dates and forms are printed, and how a document's
ground truth is assembled."""

import random
from datetime import date, timedelta

QUESTIONS = {
    "payment": "What is the monthly principal and interest payment?",
    "housing": "What is the total monthly housing payment (PITI)?",
    "dti": "What is the debt-to-income ratio?",
    "ltv": "What is the loan-to-value ratio?",
    "income": "What is the total monthly income?",
    "decision": "What is the underwriting decision?",
    "apr": "What is the annual percentage rate (APR)?",
    "cash": "How much cash is needed to close?",
    "closing_costs": "What are the total closing costs?",
    "appraised": "What is the appraised value?",
}
"""Fixed wording of the computed-fact questions, so evaluations can group answers by question."""

_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)
_PROGRAM_LABEL = {"conventional": "Conventional", "FHA": "FHA", "VA": "VA", "jumbo": "Jumbo"}
_EPOCH = date(2023, 1, 2)


def _pct(x: float) -> str:
    return f"{x:.1f}%"


def _rate(x: float) -> str:
    return f"{x:.3f}%"


def _day(rng: random.Random) -> date:
    return _EPOCH + timedelta(days=rng.randrange(900))


def _fmt_date(d: date, style: int) -> str:
    """Three US date styles, spelled out by hand because strftime follows the locale."""
    if style == 0:
        return f"{_MONTHS[d.month - 1]} {d.day}, {d.year}"
    return f"{d.month:02d}/{d.day:02d}/{d.year}" if style == 1 else d.isoformat()


def _fact(question: str, answer: str, value: float | None, unit: str | None) -> dict:
    return {"question": question, "answer": answer, "value": value, "unit": unit}


def _pii(kind: str, value: str) -> dict:
    return {"type": kind, "value": value}


def _truth(kind: str, fields: dict, summary: str, facts: list, pii: list, decision=None,
           reasons=(), intent=None, numbers=None) -> dict:
    """Assemble a clean document's ground truth (see the package docstring for each key)."""
    return {
        "kind": kind, "decision": decision, "reasons": list(reasons), "intent": intent,
        "summary_fields": fields, "reference_summary": summary, "facts": facts,
        "pii": list({(p["type"], p["value"]): p for p in pii}.values()),
        "noise": None, "duplicate_of": None, "numbers": numbers,
    }


def _form(fields: list[tuple[str, str]], style: int) -> str:
    """Label/value pairs in one of the four layouts loan files use."""
    if style == 0:
        return "\n".join(f"{k}: {v}" for k, v in fields)
    if style == 1:
        rows = [f"| {k} | {v} |" for k, v in fields]
        return "\n".join(["| Item | Value |", "|---|---|"] + rows)
    if style == 2:
        return "\n".join(f"{k + ' ':.<38} {v}" for k, v in fields)
    return "\n".join(f"• {k} — {v}" for k, v in fields)


def _heading(title: str, style: int) -> str:
    if style == 0:
        return title.upper()
    if style == 1:
        return f"## {title}"
    return f"{title}\n{'-' * len(title)}" if style == 2 else f"[{title}]"


def _sections(sections: list[tuple[str, list]], style: int) -> list[str]:
    return [f"{_heading(title, style)}\n{_form(fields, style)}" for title, fields in sections]
