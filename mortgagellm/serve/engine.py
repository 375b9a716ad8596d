"""The experts' engines, and what they share: requests, their text as tokens come (incremental
detokenization, stop sequences, max_tokens) and per-request seeded sampling (temperature,
top_p). The static engine (Decoder, a batch decoded until its last row ends) is here; the
continuous one (transformers' continuous batching) is batching.py. Loading and the label scoring
the few-shot router tier needs are in modeling.py (evaluation uses them too). No Ray here:
serve/experts.py wraps an engine in a deployment.

torch and transformers are imported inside functions so `mortgagellm --help` stays instant.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GenRequest:
    """One request, tokenized: what to continue and how."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    adapter: str | None = None  # the LoRA adapter it is decoded with (serve.topology adapters)


@dataclass(frozen=True)
class Delta:
    """New text of one request after a decoding step; finish_reason set on its last delta."""

    text: str
    finish_reason: str | None
    completion_tokens: int


def completion_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a raw completion prompt: BOS + text, as the models were pretrained."""
    return tokenizer(tokenizer.bos_token + prompt, add_special_tokens=False)["input_ids"]


def visible(text: str, stops: Sequence[str], sent: int = 0) -> tuple[str, bool]:
    """(the part of `text` that may be sent now, whether a stop sequence ended it).

    Text from the first stop sequence on is cut. Without a stop, a tail that could still grow
    into one is held back, and so is a trailing U+FFFD (half a multi-byte character).
    `sent` characters were sent already, so no stop starts before them: the search starts
    there (as vLLM's does), and a token costs O(new text), not O(answer).
    """
    cut = min((i for i in (text.find(s, sent) for s in stops if s) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], True
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    safe = text[:len(text) - hold]
    return safe.rstrip("\ufffd"), False


class TextStream:
    """One request's answer as its tokens come: the text they make, cut at a stop sequence or an
    end-of-turn token, or at max_tokens. Both engines feed it one token at a time.

    Detokenization is incremental (as TGI and vLLM do it): each token decodes a window of the
    few tokens before it, not the whole answer, so a token costs O(1) tokenizer work and the
    text equals one decode of all the ids. A multi-byte character split across tokens waits
    for its last byte (its window decodes to a trailing U+FFFD until then).
    """

    def __init__(self, tokenizer: Any, request: GenRequest, stop_ids: set[int]):
        self.tokenizer, self.request, self.stop_ids = tokenizer, request, stop_ids
        self.ids: list[int] = []
        self.text = ""  # decoded so far, whole characters only
        self.sent = 0  # characters of text already sent
        self.finish: str | None = None
        self._prefix = self._read = 0  # the decode window: ids[_prefix:_read] made text's tail

    def advance(self, token: int) -> Delta:
        """Append one token and work out the text it makes visible."""
        if token in self.stop_ids:  # end of turn: flush what was held back for stop strings
            self.finish = "stop"
            return self._delta(self.text, len(self.ids))
        self.ids.append(token)
        self.text += self._new_text(final=False)
        safe, stopped = visible(self.text, self.request.stop, self.sent)
        if stopped:
            self.finish = "stop"
        elif len(self.ids) >= self.request.max_tokens:
            self.finish = "length"
            self.text += self._new_text(final=True)
            safe = self.text
        return self._delta(safe, len(self.ids))

    def _delta(self, safe: str, tokens: int) -> Delta:
        delta = Delta(safe[self.sent:], self.finish, tokens)
        self.sent += len(delta.text)
        return delta

    def _new_text(self, final: bool) -> str:
        """Text the ids after the window add; "" while it ends in half a character, unless
        `final` (max_tokens reached: what there is goes out, as a whole decode would give)."""
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix:self._read], skip_special_tokens=True)
        after = decode(self.ids[self._prefix:], skip_special_tokens=True)
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before):]


class Decoder:
    """The static engine: decodes a batch of requests together, one token per row per `step()`,
    over a KV cache, until the last row ends (serve.<expert>.engine: static; the batch is made
    by @serve.batch in experts.py). Kept to compare with the continuous engine (batching.py),
    and the engine of serve.topology adapters: rows with different adapters share a batch.

    Prompts are left-padded so every row's next token sits in the last column; rows that have
    finished keep a pad token in the batch (their output is ignored) until all are done.
    """

    def __init__(self, model: Any, tokenizer: Any, requests: Sequence[GenRequest]):
        import torch

        from mortgagellm.modeling import stop_token_ids

        self.model, self.tokenizer = model, tokenizer
        self.stop_ids = set(stop_token_ids(tokenizer))
        self.rows = [TextStream(tokenizer, r, self.stop_ids) for r in requests]
        self.generators = [seeded_generator(r.seed) for r in requests]
        width = max(len(r.prompt_ids) for r in requests)
        pad = tokenizer.pad_token_id
        device = model.device
        self.input_ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + list(r.prompt_ids)
                                       for r in requests], device=device)
        self.mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids)
                                  for r in requests], device=device)
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = None
        # One batch may mix adapters: PEFT runs each row through its own (adapter_names).
        names = [r.adapter or "__base__" for r in requests]
        self.adapters = {"adapter_names": names} if any(r.adapter for r in requests) else {}

    @property
    def done(self) -> bool:
        """True once every row has finished."""
        return all(row.finish for row in self.rows)

    def step(self) -> list[Delta | None]:
        """Advance every unfinished row by one token; None for rows finished before this step."""
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=self.input_ids, attention_mask=self.mask,
                             position_ids=self.positions, past_key_values=self.cache,
                             use_cache=True, **self.adapters)
        self.cache = out.past_key_values
        logits = out.logits[:, -1, :].float()
        deltas, next_ids = [], []
        for i, row in enumerate(self.rows):
            if row.finish:
                deltas.append(None)
                next_ids.append(self.tokenizer.pad_token_id)
                continue
            token = sample(logits[i], row.request.temperature, row.request.top_p,
                           self.generators[i])
            deltas.append(row.advance(token))
            next_ids.append(token)
        device = self.input_ids.device
        self.input_ids = torch.tensor(next_ids, device=device).unsqueeze(1)
        self.mask = torch.cat([self.mask, torch.ones_like(self.input_ids)], dim=1)
        self.positions = self.positions[:, -1:] + 1
        return deltas


def seeded_generator(seed: int | None) -> Any:
    """A request's own random numbers: seeded by the request, else at random."""
    import torch

    return torch.Generator().manual_seed(seed if seed is not None else random.getrandbits(63))


def sample(logits: Any, temperature: float, top_p: float, generator: Any) -> int:
    """Next token: argmax at temperature 0, else a draw from the top-p nucleus."""
    import torch

    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))
