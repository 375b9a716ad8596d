"""The continuous engine (serve.<expert>.engine: continuous): transformers' continuous batching
(ContinuousBatchingManager) over a paged KV cache of the size the recipe gives. A request joins
the running batch at the next step and leaves it when it ends, its pages freed then, instead of
waiting for a whole batch to start and to finish (the static engine, engine.Decoder).

What the manager does not do per request is done here:
- seeds. Its sampler draws every row from one shared torch RNG, so a request's seed would not
  reproduce its answer. The manager runs greedy (do_sample=False) with one logits processor of
  ours, seeded_sampling(), which draws each sampled row's token with that request's own
  generator (engine.sample, as the static engine draws) and masks the rest of the row, so the
  manager's argmax takes it; greedy rows are left as they are, so they equal model.generate;
- text: engine.TextStream (incremental detokenization, stop sequences, finish reasons), fed in
  the thread that takes the manager's outputs; a request that meets a stop sequence is
  cancelled in the manager, which frees its pages.

No Ray here: serve/experts.py runs one engine per replica.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from mortgagellm.serve.engine import Delta, GenRequest, TextStream, sample, seeded_generator

Deliver = Callable[[Delta | Exception], None]


@dataclass(frozen=True)
class Sampling:
    """A sampled request's settings and its own random numbers (greedy requests have none)."""

    temperature: float
    top_p: float
    generator: Any


def seeded_sampling() -> Any:
    """The manager's logits processors: one, drawing each sampled row with its request's own
    generator. (A class built here: transformers is imported only when an engine starts.)"""
    import torch
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor, ContinuousBatchingLogitsProcessorList)
    from transformers.generation.logits_process import LogitsProcessorList

    class SeededSampling(ContinuousBatchingLogitsProcessor):
        supported_kwargs = {"sampling": Sampling}  # add_request(..., sampling=Sampling(...))
        ignored_kwargs = ()

        def __init__(self) -> None:
            self.rows: list[Sampling | None] = []

        def fill_defaults(self, int32_tensor: Any) -> None:
            int32_tensor.fill_(0)

        def prepare_tensor_args(self, requests_with_new_token: list) -> Any:
            # The rows' settings are Python objects, kept for __call__, which the manager's
            # thread runs next on this batch (use_async_batching=False keeps the two in step).
            self.rows = [r.state.logit_processor_kwargs.get("sampling")
                         for r in requests_with_new_token]
            return torch.zeros(len(self.rows), dtype=torch.int32)

        def __call__(self, scores: Any, tensor_arg: Any) -> Any:
            for row, s in enumerate(self.rows):  # row i of scores is the i-th new token's
                if s is not None:
                    token = sample(scores[row], s.temperature, s.top_p, s.generator)
                    scores[row].fill_(float("-inf"))
                    scores[row, token] = 0.0
            return scores

    processors = ContinuousBatchingLogitsProcessorList(LogitsProcessorList([SeededSampling()]))
    processors.tensors_required = 1  # its argument row, as the list counts its own converts
    return processors


@dataclass
class _Live:
    """A request in flight: its text so far and where its deltas go."""

    rid: str
    stream: TextStream
    deliver: Deliver
    loop: asyncio.AbstractEventLoop | None  # deliver runs in it; None: in the output thread
    seen: int = 0  # the manager's tokens already fed to `stream`


class ContinuousEngine:
    """One model's running batch: submit() / stream() / complete() add a request, cancel()
    takes it out (the manager frees its pages at its next step), close() stops the loop once
    the requests in flight have ended."""

    def __init__(self, model: Any, tokenizer: Any, num_blocks: int, max_batch_tokens: int,
                 page_size: int, max_requests: int):
        import torch
        from transformers import ContinuousBatchingConfig, GenerationConfig

        from mortgagellm.modeling import context_length, stop_token_ids

        if num_blocks * page_size < context_length(model):
            raise ValueError(
                f"the KV cache holds num_blocks x page_size = {num_blocks} x {page_size} tokens, "
                f"less than one request of the model's context ({context_length(model)}); "
                "raise serve.<expert>.kv_cache.num_blocks")
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_token_ids(tokenizer))
        generation = GenerationConfig(do_sample=False, eos_token_id=sorted(self.stop_ids),
                                      pad_token_id=tokenizer.pad_token_id)
        # Sized here: left to itself, the manager sizes its cache from free memory (host RAM
        # on CPU: gigabytes, and tens of seconds of warm-up). No CUDA graphs and no async
        # batching: seeded_sampling runs Python per row, in step with the batch it samples.
        batching = ContinuousBatchingConfig(
            num_blocks=num_blocks, max_batch_tokens=max_batch_tokens, page_size=page_size,
            max_requests_per_batch=max_requests, use_cuda_graph=False, use_async_batching=False)
        self.manager = model.init_continuous_batching(generation_config=generation,
                                                      continuous_batching_config=batching)
        self.manager.logit_processor = seeded_sampling()  # before start() builds its batches
        self._live: dict[str, _Live] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._progress = time.monotonic()  # when the loop last gave a token, or became busy
        with torch.inference_mode():  # the loop runs in the mode it starts in: no autograd
            self.manager.start()
        self._outputs = threading.Thread(target=self._take_outputs, daemon=True,
                                         name="continuous-batching-outputs")
        self._outputs.start()

    def submit(self, request: GenRequest, deliver: Deliver,
               loop: asyncio.AbstractEventLoop | None = None) -> str:
        """Add a request to the running batch; its id (for cancel) is returned. `deliver` gets
        each of its deltas, the last with finish_reason, or the exception that ended it: in
        `loop`, else in the engine's output thread (then it must be quick)."""
        rid = f"req-{next(self._ids)}"
        sampling = {} if request.temperature <= 0 else {"sampling": Sampling(
            request.temperature, request.top_p, seeded_generator(request.seed))}
        with self._lock:
            if not self._live:
                self._progress = time.monotonic()
            self._live[rid] = _Live(rid, TextStream(self.tokenizer, request, self.stop_ids),
                                    deliver, loop)
        added = self.manager.add_request(list(request.prompt_ids), request_id=rid,
                                         max_new_tokens=request.max_tokens, streaming=True,
                                         **sampling)
        if added is None:  # the manager refuses requests once its loop stopped
            with self._lock:
                self._live.pop(rid, None)
            raise RuntimeError(f"the decode loop takes no requests: it stopped "
                               f"({self.error() or 'closed'})")
        return rid

    def cancel(self, rid: str) -> None:
        """Take a request out of the batch (a no-op once it ended): nothing more is delivered,
        and the manager drops it and frees its pages before its next step."""
        with self._lock:
            live = self._live.pop(rid, None)
        if live is not None:
            self.manager.cancel_request(rid)

    async def stream(self, request: GenRequest) -> AsyncIterator[Delta]:
        """A request's deltas as they are decoded. Leaving the iteration early (the client
        went, a deadline, a cancelled task) cancels the request in the engine."""
        items: asyncio.Queue = asyncio.Queue()
        rid = self.submit(request, items.put_nowait, asyncio.get_running_loop())
        ended = False
        try:
            while not ended:
                item = await items.get()
                ended = isinstance(item, Exception) or item.finish_reason is not None
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            if not ended:
                self.cancel(rid)

    def complete(self, request: GenRequest, timeout: float | None = None) -> list[Delta]:
        """All of a request's deltas, blocking; TimeoutError (the request cancelled) when the
        next delta takes longer than `timeout` seconds."""
        items: queue.Queue = queue.Queue()
        rid = self.submit(request, items.put)
        deltas: list[Delta] = []
        while not deltas or deltas[-1].finish_reason is None:
            try:
                item = items.get(timeout=timeout)
            except queue.Empty:
                self.cancel(rid)
                raise TimeoutError(f"no token for {timeout:g} s") from None
            if isinstance(item, Exception):
                raise item
            deltas.append(item)
        return deltas

    def in_flight(self) -> int:
        """Requests submitted and not ended."""
        return len(self._live)

    def stalled_s(self) -> float:
        """Seconds since the loop last gave a token while requests wait for one (0 when none
        does): the health check's measure of a decode step that does not return."""
        return time.monotonic() - self._progress if self._live else 0.0

    def error(self) -> BaseException | None:
        """The error that stopped the decode loop, if one did."""
        return self.manager.background_thread_status.fatal_error

    def close(self, timeout: float | None = None) -> None:
        """Stop once the requests in flight have ended (a second call does nothing); later
        submits raise. The manager's loop is not a daemon thread: a process that exits
        without this waits for it."""
        if self.manager.is_running():
            self.manager.stop(block=True, timeout=timeout)
        self._outputs.join(timeout)

    def _take_outputs(self) -> None:
        """The output thread: the manager's outputs (one per request and step) to deltas,
        until its loop has stopped and every output is taken. A loop that died has failed its
        requests; any it had not seen yet fail here."""
        while True:
            output = self.manager.get_result(timeout=0.1)
            if output is None and not self.manager.is_running():
                output = self.manager.get_result(timeout=0)  # one it gave as it stopped?
                if output is None:
                    break
            sends: list[tuple[_Live, Delta | Exception]] = []
            while output is not None:  # the step's outputs, then one wake-up per event loop
                self._progress = time.monotonic()
                self._take(output, sends)
                output = self.manager.get_result(timeout=0)
            self._send(sends)
        with self._lock:
            left, self._live = list(self._live.values()), {}
        error = RuntimeError(f"the decode loop stopped ({self.error() or 'closed'})")
        self._send([(live, error) for live in left])

    def _take(self, output: Any, sends: list[tuple[_Live, Delta | Exception]]) -> None:
        """One output of the manager: its new tokens through the request's TextStream, the
        deltas to `sends`."""
        rid = output.request_id
        with self._lock:
            live = self._live.get(rid)
        if live is None:  # cancelled
            return
        if output.error is not None:
            self._end(rid)
            sends.append((live, RuntimeError(f"the decode failed: {output.error}")))
            return
        for token in output.generated_tokens[live.seen:]:
            live.seen += 1
            delta = live.stream.advance(token)
            sends.append((live, delta))
            if delta.finish_reason is not None:
                self._end(rid)
                if not output.is_finished():  # a stop sequence: the manager would go on
                    self.manager.cancel_request(rid)
                return

    def _end(self, rid: str) -> None:
        with self._lock:
            self._live.pop(rid, None)

    def _send(self, sends: list[tuple[_Live, Delta | Exception]]) -> None:
        """Deliver: in the output thread, or with one call into each event loop (a wake-up
        per token and request costs more than the step's other work on a small model). A
        closed loop has nobody waiting: its requests are cancelled."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for live, item in sends:
            if live.loop is None:
                live.deliver(item)
            else:
                by_loop.setdefault(live.loop, []).append((live, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, items)
            except RuntimeError:  # the loop is closed
                for live, _ in items:
                    self.cancel(live.rid)


def _deliver_all(items: list[tuple[_Live, Delta | Exception]]) -> None:
    for live, item in items:
        live.deliver(item)
