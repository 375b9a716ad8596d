"""Chat prompts for training and measurement: trl's chat-template rendering, token ids of
templated text, and fitting a prompt into a token budget by cutting only the document inside it.
"""

from __future__ import annotations

from typing import Any


def render(tokenizer: Any, user: str, **answers: str) -> dict[str, str]:
    """Chat-template text of a one-turn prompt (ending in the assistant header) and of each
    answer (ending in <|eot_id|>), via trl's prompt-completion formatting."""
    from trl.data_utils import apply_chat_template

    example = {"prompt": [{"role": "user", "content": user}]}
    example |= {k: [{"role": "assistant", "content": v}] for k, v in answers.items()}
    return apply_chat_template(example, tokenizer)


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of already-templated text (the template writes BOS itself)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fit_prompt(tokenizer: Any, user: str, document: str, budget: int
               ) -> tuple[str, list[int], bool] | None:
    """(user text, templated prompt ids, cut?) with the prompt at most `budget` tokens.

    Only the document inside the user text is cut, at a token boundary from its end, so the
    instruction always survives; None when even the instruction alone does not fit (or the
    prompt is too long and holds no document to cut).
    """
    ids = encode(tokenizer, render(tokenizer, user)["prompt"])
    if len(ids) <= budget:
        return user, ids, False
    if not document or document not in user:
        return None
    offsets = tokenizer(document, add_special_tokens=False,
                        return_offsets_mapping=True)["offset_mapping"]
    keep = len(offsets) - (len(ids) - budget)
    while keep > 0:  # tokens can merge differently at the cut: shrink until it fits
        cut = user.replace(document, document[:offsets[keep - 1][1]], 1)
        ids = encode(tokenizer, render(tokenizer, cut)["prompt"])
        if len(ids) <= budget:
            return cut, ids, True
        keep -= len(ids) - budget
    return None
