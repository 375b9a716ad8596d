"""Prompt-completion supervised fine-tuning, shared by the sft stage (the structured expert) and
the dpo stage's optional SFT phase (the conversational expert's chosen answers before DPO):
tokenised rows with the document cut to fit, and the prompt-masked LM `Objective`.
"""

from __future__ import annotations

from typing import Any

from mortgagellm.training.chat import encode, fit_prompt, render
from mortgagellm.training.loop import Objective, lm_loss


def completion_row(tokenizer: Any, prompt: str, document: str, answer: str, max_len: int
                   ) -> tuple[dict, bool] | None:
    """({input_ids, prompt_len}, document cut?) of one chat-templated prompt and answer, the
    document inside the prompt cut so the whole fits max_len; None when the answer leaves no
    room for the prompt."""
    answer_ids = encode(tokenizer, render(tokenizer, "", completion=answer)["completion"])
    fitted = fit_prompt(tokenizer, prompt, document, max_len - len(answer_ids))
    if fitted is None:
        return None
    return {"input_ids": fitted[1] + answer_ids, "prompt_len": len(fitted[1])}, fitted[2]


def sft_batch(rows: list[dict], device: Any) -> dict[str, Any]:
    """Right-padded inputs; labels are -100 on the prompt and padding, so only the answer
    tokens (through <|eot_id|>) carry loss."""
    import torch
    from trl.trainer.utils import pad

    ids = [torch.tensor(r["input_ids"], dtype=torch.long) for r in rows]
    labels = [t.clone() for t in ids]
    for label, row in zip(labels, rows):
        label[:row["prompt_len"]] = -100
    batch = {"input_ids": pad(ids, 0), "attention_mask": pad([torch.ones_like(t) for t in ids], 0),
             "labels": pad(labels, -100)}
    return {k: v.to(device) for k, v in batch.items()} | {"use_cache": False}


SFT = Objective("sft", sft_batch, lm_loss)
"""Prompt-masked causal LM loss on chat-templated records."""
