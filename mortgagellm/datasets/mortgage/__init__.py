"""Deterministic synthetic mortgage corpus: every document comes with the truth it was made from.

``generate(seed, shard, num_docs)`` yields records {doc_id, source, kind, text, ground_truth}.
The same arguments give byte-identical records on any machine: every choice comes from a
``random.Random`` seeded by sha256(f"{seed}:{shard}"), and nothing reads the clock, uuid4,
the locale or Python's salted ``hash()``. Numbers in the text are computed by ``finance`` and
decisions by ``underwriting``, so the ground truth is exact rather than annotated.

Ground truth: kind; decision and reasons (documents built on an application: loan_application,
underwriting_note, loan_estimate, closing_disclosure; else None / []); intent (e-mails);
summary_fields and reference_summary (which contains every summary field); facts
[{question, answer, value, unit}] whose answer string appears in the text; pii [{type, value}]
of every personal value in the text; noise; duplicate_of (doc_id a duplicate copies); numbers
(the inputs the facts are computed from, or None).

All people, SSNs (area 900-999, never issued), phones (555-01xx), e-mails (example.com /
example.org), loan numbers and lenders are fictional.

Modules, in the order a record is made: ``people`` (who appears), ``layout`` (how figures,
dates and forms print; ground-truth assembly), the renderers ``applications``, ``disclosures``,
``appraisal``, ``emails`` and ``regulations``, ``noise`` (what replaces a clean record) and
``corpus`` (``generate`` and the Arrow form). Names with a leading underscore are shared
between these modules only; everything a caller needs is imported here.
"""

from mortgagellm.datasets.mortgage.applications import application
from mortgagellm.datasets.mortgage.corpus import (
    DOC_KINDS,
    RECORD_SCHEMA,
    from_arrow,
    generate,
    generate_sharded,
    shard_sizes,
    to_arrow,
)
from mortgagellm.datasets.mortgage.disclosures import closing_costs
from mortgagellm.datasets.mortgage.emails import INTENTS
from mortgagellm.datasets.mortgage.layout import QUESTIONS
from mortgagellm.datasets.mortgage.noise import NOISE_RATES, OVERSIZED_CHARS, htmlify, mojibake
from mortgagellm.datasets.mortgage.people import FIRST_NAMES

__all__ = [
    "DOC_KINDS", "FIRST_NAMES", "INTENTS", "NOISE_RATES", "OVERSIZED_CHARS", "QUESTIONS",
    "RECORD_SCHEMA", "application", "closing_costs", "from_arrow", "generate",
    "generate_sharded", "htmlify", "mojibake", "shard_sizes", "to_arrow",
]
