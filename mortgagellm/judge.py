"""LLM-as-judge: a 1-5 rubric per task (the MortgageLLM paper's protocol), asked of any
OpenAI-compatible endpoint (recipe: evaluate.judge). The prompt builder and the score parser are
pure; `Judge` only sends the prompt and caches the reply.

A judgement that does not state one score from 1 to 5 is unparseable: it is counted
(judge_unparseable), never dropped or guessed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

from mortgagellm.config import JudgeSettings

SYSTEM = ("You grade answers written by a mortgage assistant against a reference answer. You are "
          "strict, consistent and brief.")
TASKS = {
    "decision": "apply the loan program's underwriting rules and give the decision (approve, "
                "refer or deny) as one label",
    "doc_kind": "name the kind of a mortgage document with one label from a fixed set",
    "intent": "name the intent of a customer or servicing e-mail with one label from a fixed set",
    "summary": "summarise a document as one 'field: value' line per key field, then one "
               "'summary:' line",
    "qa": "answer a borrower's question from the document given, in conversational prose",
}
"""What each judged task asks of the model, in the judge's words."""
LABEL_RUBRIC = (
    "5: exactly the reference label and nothing else\n"
    "4: the reference label, with a few extra words\n"
    "3: the reference label among other text, or a clear synonym of it\n"
    "2: a different label, or several labels\n"
    "1: no label, or an answer unrelated to the task")
RUBRICS = {
    "decision": LABEL_RUBRIC, "doc_kind": LABEL_RUBRIC, "intent": LABEL_RUBRIC,
    "summary": (
        "5: every field of the reference with the same values, in the layout, and a faithful "
        "summary line\n"
        "4: all but one field right, layout kept, summary line faithful\n"
        "3: about half the fields right, or the layout partly broken\n"
        "2: few fields right, or values that contradict the document\n"
        "1: not a summary of this document"),
    "qa": (
        "5: correct (the reference's figure or fact), grounded in the document, clear\n"
        "4: correct but padded, or missing a small supporting detail\n"
        "3: partly correct, or correct with an unsupported claim beside it\n"
        "2: wrong figure or fact, but on topic\n"
        "1: wrong and off topic, invented, or empty"),
}
"""The 1-5 rubric of each task."""
_SCORE = re.compile(r"score\W{0,6}([1-5])(?!\.?\d)", re.I)
_OUT_OF = re.compile(r"(?<![\d.])([1-5])\s*(?:/|out of)\s*5(?!\.?\d)", re.I)
_BARE = re.compile(r"\W*([1-5])\W*")


def judge_messages(task: str, prompt: str, reference: str, answer: str) -> list[dict[str, str]]:
    """The chat messages asking for one task's 1-5 grade of `answer`."""
    if task not in RUBRICS:
        raise ValueError(f"no judge rubric for task {task!r}; tasks: {', '.join(RUBRICS)}")
    user = (f"The assistant was asked to {TASKS[task]}.\n\n"
            f"Request:\n<<<\n{prompt}\n>>>\n\n"
            f"Reference answer:\n<<<\n{reference}\n>>>\n\n"
            f"Answer to grade:\n<<<\n{answer}\n>>>\n\n"
            f"Rubric:\n{RUBRICS[task]}\n\n"
            "Reply with 'Score: N', N one of 1, 2, 3, 4, 5, and nothing else.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_score(text: str) -> int | None:
    """The 1-5 score of a judgement: 'Score: 4', '**Score:** 4', '4/5', '4 out of 5' or a bare
    '4'; None for anything else (no score, or one outside 1-5)."""
    for pattern in (_SCORE, _OUT_OF):
        found = pattern.search(text)
        if found:
            return int(found[1])
    bare = _BARE.fullmatch(text)
    return int(bare[1]) if bare else None


class Judge:
    """The judge endpoint: one chat completion per (task, request, reference, answer), greedy,
    cached, so an answer two variants share is graded once."""

    def __init__(self, cfg: JudgeSettings) -> None:
        from openai import OpenAI

        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else "unused"
        if key is None:
            raise ValueError(f"evaluate.judge.api_key_env: ${cfg.api_key_env} is not set; set "
                             "it to the endpoint's key, or set api_key_env to null if it needs "
                             "none")
        self.cfg = cfg
        self.client = OpenAI(base_url=cfg.base_url, api_key=key, timeout=cfg.timeout_s,
                             max_retries=cfg.max_retries)
        self.replies: dict[str, str] = {}

    def grade(self, task: str, prompt: str, reference: str, answer: str) -> int | None:
        """The parsed 1-5 score of one answer (None: unparseable judgement)."""
        messages = judge_messages(task, prompt, reference, answer)
        key = hashlib.sha256(json.dumps(messages).encode()).hexdigest()
        if key not in self.replies:
            reply = self.client.chat.completions.create(
                model=self.cfg.model, messages=messages, temperature=0.0,
                max_tokens=self.cfg.max_tokens)
            self.replies[key] = reply.choices[0].message.content or ""
        return parse_score(self.replies[key])

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the judge (never the key)."""
        return {"base_url": self.cfg.base_url, "model": self.cfg.model}
