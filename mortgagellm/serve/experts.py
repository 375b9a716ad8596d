"""The expert deployment: one class, deployed twice by build_app (StructuredExpert and
ConversationalExpert), or once (AdapterExperts) with serve.topology `adapters`. It holds a model
and runs it with one of two engines (serve.<expert>.engine): continuous (batching.py, the
default) or static (engine.Decoder, batched by @serve.batch); nothing else. (Engine vllm holds no
model here: llm.py's VllmExpert takes this deployment's place, in front of an LLMServer.)

The model comes in through `user_config` ({"model": directory, "version": registry hash}), so
`mortgagellm deploy` / `rollback` swap weights in place through `reconfigure`, replica by replica,
without a restart. AdapterExperts' user_config also names its LoRA adapters ({"adapters":
{route: {"model", "version"}}}): the base model is loaded once, each adapter on it (PEFT), and a
request's `adapter` picks the one it is decoded with, in a batch that mixes them (static engine:
transformers' continuous batching takes no per-request adapter).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any

from ray import serve

from mortgagellm import modeling, registry, routing
from mortgagellm.datasets.tasks.format import ROUTES
from mortgagellm.datasets.tasks.grounding import resolve, support
from mortgagellm.serve import batching, engine

log = logging.getLogger(__name__)


def length_error(prompt_tokens: int, max_tokens: int, max_prompt_tokens: int,
                 context: int) -> str | None:
    """Why a request cannot run (prompt or prompt + completion too long), else None."""
    if prompt_tokens > max_prompt_tokens:
        return (f"the prompt has {prompt_tokens} tokens; the limit is {max_prompt_tokens}. "
                "Shorten it.")
    if prompt_tokens + max_tokens > context:
        return (f"the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}, but the "
                f"model's context is {context} tokens; lower max_tokens or shorten the prompt")
    return None


def grounding_context(request: Mapping[str, Any]) -> str | None:
    """What a chat answer's source is checked against: the user's messages; None for a
    completion request (no chat, no grounded answer format)."""
    if "messages" not in request:
        return None
    return "\n".join(str(m.get("content") or "") for m in request["messages"]
                     if m.get("role") == "user")


def checked_answer(text: str, context: str, flag: bool) -> tuple[str, dict[str, Any]]:
    """A grounded answer as sent, and its audit: the source quote resolved against the context
    (grounding.resolve), then every figure or date the context neither states nor derives
    (grounding.support), named on a last line when ``flag``."""
    text, checked = resolve(text, context)
    unsupported = support(text, context)["unsupported"]
    if flag and unsupported:
        text += f"\n\nNot found in your document: {', '.join(unsupported)}."
    return text, checked | {"unsupported": unsupported}


def seed_error(seed: int | None) -> str | None:
    """Why `seed` cannot seed the sampler, else None. Checked per request before it joins a
    batch: a seed that raised inside the batch would fail every request decoded with it."""
    import torch

    if seed is None:
        return None
    try:
        torch.Generator().manual_seed(seed)
    except (RuntimeError, OverflowError, TypeError, ValueError) as err:
        return f"seed {seed} cannot seed the sampler ({err}); send a 64-bit integer"
    return None


@serve.deployment
class Expert:
    """One expert's replica: streams completions (batched) and scores routes for tier 2."""

    def __init__(self, role: str, threads: int, max_batch_size: int,
                 batch_wait_timeout_s: float, max_prompt_tokens: int,
                 health_check_timeout_s: float, engine_kind: str, kv_cache: Mapping[str, int],
                 ground: bool | Mapping[str, bool] = False,
                 flag_unsupported: bool | Mapping[str, bool] = False):
        self.role, self.threads, self.max_prompt_tokens = role, threads, max_prompt_tokens
        # one flag each, or one per adapter ({route: flag}, AdapterExperts)
        self.ground, self.flag_unsupported = ground, flag_unsupported
        self.model = self.tokenizer = self.version = self.model_dir = None
        self.adapters: dict[str, str] = {}  # {adapter name: its version} (AdapterExperts)
        self.engine_kind, self.kv_cache, self.max_batch_size = engine_kind, kv_cache, max_batch_size
        self.engine: batching.ContinuousEngine | None = None  # engine_kind "continuous"
        self.priors: dict[str | None, dict[str, float]] = {}  # by adapter (None: the model)
        # Half of Serve's patience: a stuck check says why in the log while Serve still waits.
        self.probe_timeout_s = health_check_timeout_s / 2
        self._probe: asyncio.Future | None = None
        self._step_started: float | None = None  # when the running batch step began
        self._forward = threading.Lock()  # AdapterExperts: one forward pass at a time
        self._decode.set_max_batch_size(max_batch_size)
        self._decode.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def reconfigure(self, config: Mapping[str, Any]) -> None:
        """Load the model (and adapters) named by user_config when a version changed."""
        adapters = {name: a["version"] for name, a in config.get("adapters", {}).items()}
        if (config["version"], adapters) == (self.version, self.adapters):
            return
        # Rehashed (or hash-checked as fetched) at every load: changed files are refused.
        model_dir = registry.node_weights(config)  # fetched to this node when published
        if adapters:
            model, tokenizer = modeling.load_adapters(model_dir, {
                name: registry.node_weights(a) for name, a in config["adapters"].items()},
                self.threads)
        else:
            model, tokenizer = modeling.load_for_inference(model_dir, self.threads)
        # Tier 2's content-free prior (routing.fewshot_probabilities) belongs to the model.
        priors = {name: modeling.label_logprobs(
            model, tokenizer, routing.fewshot_messages(routing.CONTENT_FREE, 16), ROUTES, name)
            for name in (list(adapters) or [None])}
        old = self.engine
        if self.engine_kind == "continuous":
            self.engine = batching.ContinuousEngine(model, tokenizer, **self.kv_cache,
                                                    max_requests=self.max_batch_size)
        self.model, self.tokenizer, self.priors = model, tokenizer, priors
        self.version, self.model_dir, self.adapters = config["version"], config["model"], adapters
        if old is not None:  # its requests end on the weights they began with, then it stops
            threading.Thread(target=old.close, name="engine-close", daemon=True).start()
        log.info("%s expert serves version %s from %s%s", self.role, self.version,
                 self.model_dir, f" with adapters {adapters}" if adapters else "")

    def __del__(self) -> None:
        """Serve's graceful shutdown (its requests drained): the continuous engine's loop
        stops, or the replica's process would wait for that thread at exit."""
        if self.engine is not None:
            self.engine.close(timeout=10)

    async def check_health(self) -> None:
        """Serve's health check: the replica must have weights, its engine must not be stuck
        in a decode step, and a one-token greedy decode must finish within probe_timeout_s.

        The probe decodes one token of a prompt of a few tokens as the requests are decoded:
        the continuous engine takes it into its running batch (one more row in a step); the
        static one runs engine.Decoder.step in a thread, beside any running batch rather than
        queued behind it in @serve.batch (a busy replica is not a stuck one). Its cost: about
        one forward pass over those few tokens per health_check_period_s (10 s by default).
        A broken model or device fails the probe; a stuck one keeps it waiting. The running
        requests are timed too, so a decode stuck mid-step fails the check at once: the
        static engine's step, or the continuous engine's loop giving no token while requests
        wait for one; and a continuous loop that died fails it with its error.

        Async on purpose: Ray 2.60 runs a sync check_health in its thread pool, where a stuck
        one would hold a pool thread until Serve gave up on it; here the wait is bounded and
        a probe still stuck from an earlier check is awaited again, never started twice.
        """
        if self.model is None:
            raise RuntimeError(f"{self.role} expert has no model loaded")
        if stuck := self.stuck():
            raise RuntimeError(f"{self.role} expert: {stuck}; the decode is stuck")
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(asyncio.to_thread(self.decode_one_token))
        try:
            await asyncio.wait_for(asyncio.shield(self._probe), self.probe_timeout_s)
        except asyncio.TimeoutError:
            raise RuntimeError(f"{self.role} expert: a one-token decode did not finish within "
                               f"{self.probe_timeout_s:g} s; the decode is stuck") from None

    def stuck(self) -> str | None:
        """Why the running decode is stuck (a step longer than probe_timeout_s, a dead
        loop), else None."""
        limit = self.probe_timeout_s
        if self.engine is not None:
            if error := self.engine.error():
                return f"the decode loop stopped ({error})"
            if (stalled := self.engine.stalled_s()) > limit:
                return (f"the decode loop has given no token for {stalled:.1f} s with "
                        f"{self.engine.in_flight()} requests in flight (limit {limit:g} s)")
        elif self._step_started is not None and \
                (running := time.monotonic() - self._step_started) > limit:
            return f"a decode step has run for {running:.1f} s (limit {limit:g} s)"
        return None

    def decode_one_token(self) -> None:
        """Decode one greedy token of a tiny completion prompt with the requests' engine."""
        request = engine.GenRequest(tuple(engine.completion_ids(self.tokenizer, "OK.")), 1)
        if self.engine is not None:
            self.engine.complete(request)
        else:
            self.exclusive(engine.Decoder(self.model, self.tokenizer, [request]).step)

    def exclusive(self, call: Any, *args: Any) -> Any:
        """call(*args); on AdapterExperts alone. PEFT applies a batch's adapter_names through
        forward hooks on the shared layers for the length of its forward pass, so two passes at
        once (a batch step, tier 2, the health probe) would apply each other's adapters."""
        if not self.adapters:
            return call(*args)
        with self._forward:
            return call(*args)

    def info(self) -> dict[str, Any]:
        """Role, model version and directory, {adapter: version} (AdapterExperts), context
        length, and the replica's process id (which shows that deploy / rollback reconfigured
        it rather than replacing it)."""
        return {"role": self.role, "version": self.version, "model": self.model_dir,
                "adapters": self.adapters, "context": modeling.context_length(self.model),
                "pid": os.getpid()}

    async def classify(self, request: str, clip_chars: int,
                       adapter: str | None = None) -> dict[str, float]:
        """Tier-2 route probabilities of a request (one forward pass, off the event loop),
        through `adapter` on AdapterExperts."""
        logprobs = await asyncio.to_thread(
            self.exclusive, modeling.label_logprobs, self.model, self.tokenizer,
            routing.fewshot_messages(request, clip_chars), ROUTES, adapter)
        return routing.fewshot_probabilities(logprobs, self.priors[adapter])

    async def generate(self, request: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream one completion: first {prompt_tokens, version} (or {error}), then deltas.

        `request` has `messages` (chat) or `prompt` (completion), and max_tokens, temperature,
        top_p, seed, stop; on AdapterExperts also `adapter`, whose name and version (and the
        base model's) the first item then carries.
        """
        adapter = request.get("adapter")
        if (adapter is not None or self.adapters) and adapter not in self.adapters:
            raise ValueError(f"{self.role}: request for adapter {adapter!r}; this replica "
                             f"serves {sorted(self.adapters) or 'no adapters'}")
        # Tokenizing a long prompt takes long enough to stall the replica's event loop (and
        # with it every other stream and the health check): it runs in a thread.
        ids = await asyncio.to_thread(self.prompt_ids, request)
        error = length_error(len(ids), request["max_tokens"], self.max_prompt_tokens,
                             modeling.context_length(self.model))
        if error:
            yield {"error": error, "code": "context_length_exceeded"}
            return
        if error := seed_error(request["seed"]):
            yield {"error": error, "code": "invalid_value"}
            return
        yield {"prompt_tokens": len(ids), "version": self.version} if adapter is None else {
            "prompt_tokens": len(ids), "version": self.adapters[adapter], "adapter": adapter,
            "base_version": self.version}
        job = engine.GenRequest(tuple(ids), request["max_tokens"], request["temperature"],
                                request["top_p"], request["seed"], tuple(request["stop"]),
                                adapter)
        # aclosing: a caller that stops early (cancelled, client gone) cancels the request in
        # the continuous engine now, not when the generator is garbage-collected.
        deltas = self.engine.stream(job) if self.engine is not None else self._decode(job)
        ground, flag = (f[adapter] if isinstance(f, Mapping) else f
                        for f in (self.ground, self.flag_unsupported))
        context = grounding_context(request) if ground else None
        async with aclosing(deltas):
            if context is None:
                async for delta in deltas:
                    yield {"text": delta.text, "finish_reason": delta.finish_reason,
                           "completion_tokens": delta.completion_tokens}
                return
            text, last = "", None
            async for last in deltas:
                text += last.text
            if last is not None:
                text, checked = checked_answer(text, context, flag)
                yield {"text": text, "finish_reason": last.finish_reason,
                       "completion_tokens": last.completion_tokens, "grounding": checked}

    def prompt_ids(self, request: Mapping[str, Any]) -> list[int]:
        """Token ids of a chat (`messages`) or completion (`prompt`) request."""
        if "messages" in request:
            return modeling.chat_ids(self.tokenizer, request["messages"])
        return engine.completion_ids(self.tokenizer, request["prompt"])

    async def complete(self, request: Mapping[str, Any]) -> list[dict[str, Any]]:
        """All of generate()'s items in one reply: a request that is not streamed to its client
        crosses Ray once instead of once per token."""
        return [item async for item in self.generate(request)]

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _decode(self, jobs: list[engine.GenRequest]) -> AsyncIterator[list]:
        """The static engine's batching: requests that arrive together are decoded as one
        batch, until its last request ends.

        Each step runs in a thread so the replica keeps accepting requests and health checks;
        a finished row gets StopIteration, which ends that caller's stream (Serve's protocol).
        """
        decoder = engine.Decoder(self.model, self.tokenizer, jobs)
        while not decoder.done:
            self._step_started = time.monotonic()  # check_health times the step
            try:
                deltas = await asyncio.to_thread(self.exclusive, decoder.step)
            finally:
                self._step_started = None
            yield [StopIteration if d is None else d for d in deltas]
