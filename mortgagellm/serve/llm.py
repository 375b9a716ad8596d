"""Engine vllm (serve.<expert>.engine: vllm, GPU): the expert's model runs in Ray Serve LLM's
LLMServer (vLLM), a deployment of its own built by ray.serve.llm.build_llm_deployment, and
VllmExpert, in the expert's place, forwards each request to it over its handle. The Router, the
door (keys, limits), the audit log and the conversational expert's grounding check stay ours and
in front: VllmExpert answers the Router exactly as experts.Expert does (info, classify, generate,
complete; the same items).

Pure, and tested without Ray Serve LLM or vLLM: the LLMConfig's fields from the recipe
(llm_config), our request -> the OpenAI request's fields (openai_request), the LLMServer's
stream -> our items (stream_events, answer_items), and tier 2's label scores from prompt
log-probabilities (label_request, label_scores). `import ray.serve.llm` fails without vLLM
(Ray 2.60 imports vLLM's protocol models), so it is imported only in `bind` and VllmExpert's
methods, which run on the GPU path (`pip install .[gpu]`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any

from ray import serve

from mortgagellm import routing
from mortgagellm.config import ExpertSettings
from mortgagellm.datasets.tasks.format import ROUTES
from mortgagellm.serve.experts import checked_answer, grounding_context, length_error

BASE_MODEL_ID = "mortgagellm-base"
"""The LLMServer's model id under serve.topology adapters (vllm.model_id unset)."""


def model_id(s: ExpertSettings, expert: str | None) -> str:
    """The id the LLMServer serves the model under: vllm.model_id, else the expert's public
    model name (None: AdapterExperts' base model)."""
    return s.vllm.model_id or (routing.ROUTE_MODELS[expert] if expert else BASE_MODEL_ID)


def llm_config(s: ExpertSettings, model_id: str, model_source: str,
               deployment: Mapping[str, Any], lora: Mapping[str, Any] | None = None
               ) -> dict[str, Any]:
    """ray.serve.llm.LLMConfig's fields for one expert, as plain data.

    `deployment`: the LLMServer's Serve options (app.deployment_options: autoscaling, queue
    limits, health checks); its replica actor gets num_cpus here, while its GPUs are the
    engine's placement bundles, one per device (LLMServer merges the actor into the first),
    so num_gpus becomes tensor_parallel_size and accelerator_type the bundles' resource.
    `model_source`: the model directory or s3:// URI the registry names. `lora`
    (topology adapters): LLMConfig.lora_config, with vLLM's LoRA switched on for it.
    """
    kwargs = dict(s.vllm.engine_kwargs)
    placed = "placement_group_config" in s.vllm.llm_config
    if not placed and not {"tensor_parallel_size", "pipeline_parallel_size"} & set(kwargs):
        kwargs["tensor_parallel_size"] = int(s.num_gpus)
    kwargs["max_num_seqs"] = s.max_batch_size
    if lora is not None:
        kwargs |= {"enable_lora": True, "max_loras": lora["max_num_adapters_per_replica"]}
    config: dict[str, Any] = {
        "model_loading_config": {"model_id": model_id, "model_source": model_source},
        "engine_kwargs": kwargs,
        "deployment_config": dict(deployment) | {"ray_actor_options": {"num_cpus": s.num_cpus}}}
    if s.accelerator_type:
        config["accelerator_type"] = s.accelerator_type
    if lora is not None:
        config["lora_config"] = dict(lora)
    return config | s.vllm.llm_config


def target(served: Mapping[str, Any], adapter: str | None) -> tuple[str, dict[str, str]]:
    """(the model id a request asks the LLMServer for, the served fields of its first item).

    Without adapters, the model itself; under topology adapters, `<model_id>:<adapter
    version>`: Ray Serve LLM loads the adapter from `<dynamic_lora_loading_path>/<version>`.
    Versions are immutable, so a deployed version is a new id and no replica serves stale
    weights from its adapter cache."""
    adapters = served.get("adapters") or {}
    if (adapter is not None or adapters) and adapter not in adapters:
        raise ValueError(f"request for adapter {adapter!r}; this replica serves "
                         f"{sorted(adapters) or 'no adapters'}")
    if adapter is None:
        return served["model_id"], {"version": served["version"]}
    version = adapters[adapter]["version"]
    return f"{served['model_id']}:{version}", {"version": version, "adapter": adapter,
                                               "base_version": served["version"]}


def openai_request(request: Mapping[str, Any], model: str) -> dict[str, Any]:
    """ChatCompletionRequest's (`messages`) or CompletionRequest's (`prompt`) fields for one of
    the Router's expert payloads (http.expert_payload). Always streamed, with usage on every
    chunk (continuous_usage_stats): the first gives the prompt's tokens, which the first item
    carries and max_prompt_tokens is checked against, and each gives the answer's tokens so far.
    A completion's prompt gets the tokenizer's BOS (add_special_tokens), as the other engines
    prepend it."""
    source = ({"messages": [dict(m) for m in request["messages"]]} if "messages" in request
              else {"prompt": request["prompt"]})
    return {"model": model, **source, "max_tokens": request["max_tokens"],
            "temperature": request["temperature"], "top_p": request["top_p"],
            "seed": request["seed"], "stop": list(request["stop"]), "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}


def stream_events(item: str | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The chunks in one item of the LLMServer's stream: server-sent events (`data: {json}`,
    one or more; `data: [DONE]` gives none), or an error answer already as a dict."""
    import json

    if not isinstance(item, str):
        return [dict(item)]
    events = (line[len("data:"):].strip() for line in item.splitlines()
              if line.startswith("data:"))
    return [json.loads(data) for data in events if data != "[DONE]"]


def error_item(error: Mapping[str, Any]) -> dict[str, str]:
    """The first item for an LLMServer error answer (its `error` object). A request vLLM refused
    (4xx: longer than max_model_len with max_tokens, a value it takes no) is the client's: 400
    `invalid_request` with vLLM's message; any other failure raises (the Router's 500)."""
    code = error.get("code")
    if isinstance(code, int) and 400 <= code < 500:
        return {"error": f"the model refused the request: {error.get('message')}",
                "code": "invalid_request"}
    raise RuntimeError(f"the vLLM engine failed ({code}): {error.get('message')}")


def chunk_delta(chunk: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """(new text, finish reason) of a chat or completion stream chunk's one choice; None for a
    chunk without one (the usage-only last chunk)."""
    if not chunk.get("choices"):
        return None
    choice = chunk["choices"][0]
    text = choice["delta"].get("content") if "delta" in choice else choice.get("text")
    return text or "", choice.get("finish_reason")


async def answer_items(chunks: AsyncIterator[dict[str, Any]], served: Mapping[str, str],
                       max_prompt_tokens: int, context: str | None, flag: bool
                       ) -> AsyncIterator[dict[str, Any]]:
    """experts.Expert.generate's items from the LLMServer's chunks: {prompt_tokens, served
    fields} (or {error, code}) first, then {text, finish_reason, completion_tokens} deltas;
    with a grounding `context`, one checked answer instead of the deltas.

    The prompt's length is known from vLLM's first chunk only: a prompt over max_prompt_tokens
    then ends the stream with the same error the other engines give before decoding (its prefill
    is spent; the door's max_prompt_chars bounds it). Empty deltas (the chat's role chunk) are
    not passed on; the one that finishes is.
    """
    first, text, last = None, "", None
    async for chunk in chunks:
        if "error" in chunk:
            if first is not None:
                raise RuntimeError(f"the vLLM stream failed: {chunk['error'].get('message')}")
            yield error_item(chunk["error"])
            return
        if "usage" not in chunk:
            raise RuntimeError("a vLLM stream chunk without usage: the request must ask "
                               "stream_options continuous_usage_stats (openai_request does)")
        delta, prompt = chunk_delta(chunk), chunk["usage"]["prompt_tokens"]
        if first is None:
            # prompt + max_tokens against the context is vLLM's own check (max_model_len)
            if error := length_error(prompt, 0, max_prompt_tokens, context=prompt):
                yield {"error": error, "code": "context_length_exceeded"}
                return
            first = {"prompt_tokens": prompt, **served}
            yield first
        if delta is None or not (delta[0] or delta[1]):
            continue
        last = {"text": delta[0], "finish_reason": delta[1],
                "completion_tokens": chunk["usage"]["completion_tokens"]}
        if context is None:
            yield last
        else:
            text += delta[0]
    if context is not None and last is not None:
        text, checked = checked_answer(text, context, flag)
        yield last | {"text": text, "grounding": checked}


def label_request(messages: Sequence[Mapping[str, str]], label: str, model: str
                  ) -> dict[str, Any]:
    """ChatCompletionRequest's fields that score one route label: the few-shot conversation with
    the label as the assistant's closed turn, its prompt's log-probabilities asked for
    (prompt_logprobs 0: each prompt token's own), one token decoded (vLLM decodes at least
    one)."""
    return {"model": model, "messages": [*map(dict, messages),
                                         {"role": "assistant", "content": label}],
            "add_generation_prompt": False, "prompt_logprobs": 0, "max_tokens": 1,
            "temperature": 0.0, "stream": False}


def label_scores(prompt_logprobs: Mapping[str, Sequence[Mapping[Any, Mapping[str, float]] | None]]
                 ) -> dict[str, float]:
    """Each label's log P(label + end of turn | prompt) up to a constant shared by all labels,
    from the prompt_logprobs of its label_request: the sum over the tokens from where the
    labels' prompts part (the tokens before are the same prompt, with the same log-probability
    in each). routing.fewshot_probabilities normalizes over the labels, so the shared constant
    cancels, and the scores equal modeling.label_logprobs' for tier 2."""
    rows = {}
    for label, entries in prompt_logprobs.items():
        row = []
        for entry in entries:
            if entry is None:  # the first token has none
                continue
            if len(entry) != 1:
                raise ValueError(f"label {label!r}: {len(entry)} log-probabilities at one prompt "
                                 "position; ask prompt_logprobs 0 (the prompt token's own)")
            ((token, logprob),) = entry.items()
            row.append((str(token), float(logprob["logprob"])))
        rows[label] = row
    shared = 0
    while all(shared < len(r) for r in rows.values()) and \
            len({r[shared][0] for r in rows.values()}) == 1:
        shared += 1
    return {label: sum(lp for _, lp in row[shared:]) for label, row in rows.items()}


def plain(item: Any) -> str | dict[str, Any]:
    """An LLMServer stream item as stream_events takes it: SSE text as is, a response or error
    object (pydantic) as its dict."""
    return item if isinstance(item, str) else item.model_dump()


@serve.deployment
class VllmExpert:
    """An expert of engine vllm: no model, a handle to its LLMServer. The served versions come
    in through user_config as for experts.Expert; the LLMServer loaded its model when the app
    was built, so a new model version rebuilds the app (app.serve_config), while under topology
    adapters a new adapter version is only a new model id: reconfigured in place."""

    def __init__(self, llm: Any, role: str, model_id: str, loaded: Mapping[str, str],
                 max_prompt_tokens: int, context: int | None,
                 ground: bool | Mapping[str, bool] = False,
                 flag_unsupported: bool | Mapping[str, bool] = False):
        self.llm, self.role, self.model_id, self.loaded = llm, role, model_id, dict(loaded)
        self.max_prompt_tokens, self.context = max_prompt_tokens, context
        self.ground, self.flag_unsupported = ground, flag_unsupported
        self.served: dict[str, Any] = {}
        self.priors: dict[str | None, dict[str, float]] = {}  # by adapter, as Expert's

    def reconfigure(self, config: Mapping[str, Any]) -> None:
        """Take the served versions; the model must be the one the LLMServer loaded."""
        if config["version"] != self.loaded["version"]:
            raise ValueError(f"{self.role}: user_config names model version "
                             f"{config['version'][:12]}, but the LLMServer loaded "
                             f"{self.loaded['version'][:12]} when the app was built; rebuild "
                             "the app (mortgagellm deploy / serve do) to switch the model")
        self.served = dict(config) | {"model_id": self.model_id}
        self.priors = {}

    def info(self) -> dict[str, Any]:
        """As experts.Expert.info: role, versions, model directory, context, process id."""
        return {"role": self.role, "version": self.served["version"],
                "model": self.served["model"], "engine": "vllm", "model_id": self.model_id,
                "adapters": {name: a["version"] for name, a in
                             (self.served.get("adapters") or {}).items()},
                "context": self.context, "pid": os.getpid()}

    def handle(self, model: str, stream: bool = True) -> Any:
        """The LLMServer's handle for `model`: an adapter's id is Serve's multiplexed model id,
        which routes it to a replica that has the adapter loaded when one has."""
        handle = self.llm.options(stream=stream)
        return handle.options(multiplexed_model_id=model) if ":" in model else handle

    async def generate(self, request: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream one completion, as experts.Expert.generate does, decoded by the LLMServer."""
        from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

        adapter = request.get("adapter")
        model, served = target(self.served, adapter)
        body = openai_request(request, model)
        handle = self.handle(model)
        call = (handle.chat.remote(ChatCompletionRequest(**body)) if "messages" in body else
                handle.completions.remote(CompletionRequest(**body)))
        ground, flag = (f[adapter] if isinstance(f, Mapping) else f
                        for f in (self.ground, self.flag_unsupported))
        context = grounding_context(request) if ground else None
        items = answer_items(self.chunks(call), served, self.max_prompt_tokens, context, flag)
        try:
            async with aclosing(items):
                async for item in items:
                    yield item
        finally:  # a caller that stopped early (client gone, deadline) stops the decode
            call.cancel()

    async def chunks(self, call: Any) -> AsyncIterator[dict[str, Any]]:
        """The chunks of an LLMServer stream, which yields lists of SSE events (batched every
        few ms) or, for a refused request, one error answer."""
        async for batch in call:
            for item in batch if isinstance(batch, list) else [batch]:
                for chunk in stream_events(plain(item)):
                    yield chunk

    async def complete(self, request: Mapping[str, Any]) -> list[dict[str, Any]]:
        """All of generate()'s items in one reply (one Ray crossing back to the Router)."""
        return [item async for item in self.generate(request)]

    async def classify(self, request: str, clip_chars: int,
                       adapter: str | None = None) -> dict[str, float]:
        """Tier-2 route probabilities, as experts.Expert.classify: each label scored by the
        LLMServer's prompt log-probabilities (label_scores), calibrated by the content-free
        prompt's scores, which are asked once per adapter and kept.

        Why scored here rather than left to tier 1 alone (the router's fallback): hybrid routing
        asks tier 2 exactly for the requests tier 1 is unsure of, and vLLM gives the prompt's
        exact log-probabilities (prompt_logprobs), so the scores are modeling.label_logprobs'
        and the threshold fitted with tier 1 still means what it meant. The cost: one request
        per label on a few-hundred-token prompt (vLLM may prefill it afresh rather than from its
        prefix cache, to compute the log-probabilities), for the unsure share of requests only.
        """
        model, _ = target(self.served, adapter)
        if adapter not in self.priors:
            self.priors[adapter] = await self.label_logprobs(
                routing.fewshot_messages(routing.CONTENT_FREE, 16), model)
        scores = await self.label_logprobs(routing.fewshot_messages(request, clip_chars), model)
        return routing.fewshot_probabilities(scores, self.priors[adapter])

    async def label_logprobs(self, messages: list[dict[str, str]], model: str
                             ) -> dict[str, float]:
        """label_scores of the routes, their requests sent together."""
        import asyncio

        from ray.serve.llm.openai_api_models import ChatCompletionRequest

        async def answer(label: str) -> dict[str, Any]:
            call = self.handle(model).chat.remote(
                ChatCompletionRequest(**label_request(messages, label, model)))
            async for item in call:  # one response (not streamed) or an error
                return plain(item)
            raise RuntimeError("the LLMServer gave no answer")

        answers = await asyncio.gather(*(answer(label) for label in ROUTES))
        for item in answers:
            if "error" in item:
                raise RuntimeError(f"tier 2 scoring failed: {item['error'].get('message')}")
        return label_scores({label: a["prompt_logprobs"] for label, a in zip(ROUTES, answers)})


def bind(name: str, llm_name: str, role: str, s: ExpertSettings, served: Mapping[str, Any],
         options: Mapping[str, Mapping[str, Any]], max_prompt_tokens: int,
         ground: bool | Mapping[str, bool], flag: bool | Mapping[str, bool],
         lora: Mapping[str, Any] | None = None) -> Any:
    """VllmExpert `name` bound to its LLMServer `llm_name`, which serves `served` (user_config:
    model directory and version, and the adapters under topology adapters)."""
    from ray.serve.llm import LLMConfig, build_llm_deployment

    mid = model_id(s, None if role == "adapters" else role)
    # vLLM reads the weights itself: from where they are published, when they are
    config = LLMConfig(**llm_config(s, mid, served.get("uri") or served["model"],
                                    options[llm_name], lora))
    server = build_llm_deployment(config, override_serve_options={"name": llm_name})
    loaded = {"model": served["model"], "version": served["version"]}
    return VllmExpert.options(name=name, user_config=dict(served), **options[name]).bind(
        server, role, mid, loaded, max_prompt_tokens, s.vllm.engine_kwargs.get("max_model_len"),
        ground, flag)
