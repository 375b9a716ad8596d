"""Model-level helpers shared by stages: the local byte-level BPE tokenizer with a Llama-3 style
chat template, tiny Llama construction, greedy chat generation, fidelity and perplexity.

torch and transformers are imported inside functions so `mortgagellm --help` stays instant.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mortgagellm.datasets.instructions import Instruction, correct, follows

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
START_HEADER, END_HEADER, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
SPECIAL_TOKENS = (BOS, EOS, PAD, START_HEADER, END_HEADER, EOT)
# Llama-3's layout: a header per turn, the turn ends with <|eot_id|>.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """Byte-level BPE trained in-process (deterministic for the same texts), chat-ready."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        chat_template=CHAT_TEMPLATE, model_max_length=1 << 30,
    )


def build_llama(shape: dict[str, int], tokenizer: PreTrainedTokenizerBase, seed: int
                ) -> LlamaForCausalLM:
    """A randomly initialised Llama of the given shape; the same seed gives the same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_heads"],
        max_position_embeddings=shape["max_position_embeddings"], tie_word_embeddings=False,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens that end a generated turn: <|eot_id|> and <|end_of_text|>."""
    return tokenizer.convert_tokens_to_ids([EOT, EOS])


def chat_generate(model: Any, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                  max_new_tokens: int = 48, batch_size: int = 16) -> list[tuple[str, bool]]:
    """Greedy answers to single-turn chat prompts: (text, stopped) per prompt.

    `stopped` is False when the model ran to max_new_tokens without ending its turn.
    """
    import torch

    stops = set(stop_token_ids(tokenizer))
    tokenizer.padding_side = "left"
    model.eval()
    results = []
    for start in range(0, len(prompts), batch_size):
        chats = [[{"role": "user", "content": p}] for p in prompts[start:start + batch_size]]
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                 for c in chats]
        batch = tokenizer(texts, return_tensors="pt", padding=True,
                          add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False,
                eos_token_id=sorted(stops), pad_token_id=tokenizer.pad_token_id,
            )
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), None)
            ids = row if cut is None else row[:cut]
            results.append((tokenizer.decode(ids, skip_special_tokens=True), cut is not None))
    return results


FIDELITY_TOKENS = 48
"""Generation budget of a format instruction's answer when fidelity is measured."""


def fidelity(model: Any, tokenizer: PreTrainedTokenizerBase,
             instructions: Sequence[Instruction]) -> dict[str, Any]:
    """Share of instructions whose answer obeys the asked format and ends its turn.

    Also reports exact-answer accuracy and per-format fidelity; examples keep three outputs.
    """
    outputs = chat_generate(model, tokenizer, [i.prompt for i in instructions], FIDELITY_TOKENS)
    return fidelity_of(instructions, outputs)


def fidelity_of(instructions: Sequence[Instruction], outputs: Sequence[tuple[str, bool]]
                ) -> dict[str, Any]:
    """`fidelity`'s report from (text, stopped) answers generated elsewhere (the evaluate
    stage generates them through Ray Data)."""
    ok = [stopped and follows(i, text) for i, (text, stopped) in zip(instructions, outputs)]
    by_format: dict[str, list[bool]] = {}
    for instruction, good in zip(instructions, ok):
        by_format.setdefault(instruction.format, []).append(good)
    return {
        "fidelity": sum(ok) / len(ok),
        "accuracy": sum(correct(i, t) for i, (t, _) in zip(instructions, outputs)) / len(ok),
        "by_format": {f: sum(v) / len(v) for f, v in sorted(by_format.items())},
        "n": len(ok),
        "examples": [{"prompt": i.prompt, "output": t} for i, (t, _) in
                     zip(instructions[:3], outputs[:3])],
    }


def perplexity(model: Any, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
               max_len: int = 256) -> float:
    """Token-level perplexity of plain documents (each as BOS + text + EOS)."""
    nlls = document_nlls(model, tokenizer, texts, max_len)
    return math.exp(sum(n for n, _ in nlls) / sum(t for _, t in nlls))


def document_nlls(model: Any, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                  max_len: int = 256) -> list[tuple[float, int]]:
    """(summed next-token NLL, predicted tokens) of each document, as `perplexity` counts them;
    per document, so the evaluate stage can resample documents for a confidence interval."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(BOS + text + EOS, add_special_tokens=False,
                            return_tensors="pt")["input_ids"][:, :max_len].to(model.device)
            loss = model(input_ids=ids, labels=ids).loss
            out.append((loss.item() * (ids.shape[1] - 1), ids.shape[1] - 1))
    return out


_DEFAULT_THREADS: list[int] = []  # torch's own count, read before the first change


def set_threads(threads: int | None) -> None:
    """torch threads of this process; None: torch's default (all physical cores), also after
    an earlier call set fewer."""
    import torch

    if not _DEFAULT_THREADS:
        _DEFAULT_THREADS.append(torch.get_num_threads())
    torch.set_num_threads(threads or _DEFAULT_THREADS[0])


# ---- inference: loading, chat ids, label scoring (serving and evaluation) -------------------

def load_for_inference(path: str, threads: int) -> tuple[Any, Any]:
    """(model, tokenizer) from an HF directory, in eval mode, on GPU when there is one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, tokenizer


def load_adapters(base: str, adapters: Mapping[str, str], threads: int) -> tuple[Any, Any]:
    """(PeftModel, tokenizer): the base model once, each LoRA adapter directory loaded under
    its name (PeftModel.from_pretrained, then load_adapter). A forward pass with
    adapter_names=[name per row] runs each row with its own adapter ("__base__": none)."""
    from peft import PeftModel

    model, tokenizer = load_for_inference(base, threads)
    (first, path), *others = adapters.items()
    model = PeftModel.from_pretrained(model, path, adapter_name=first)
    for name, path in others:
        model.load_adapter(path, adapter_name=name)
    return model.eval(), tokenizer


def context_length(model: Any) -> int:
    """Longest sequence (prompt + completion) the model accepts."""
    return int(model.config.max_position_embeddings)


def chat_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of a conversation through the model's chat template, assistant turn opened."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def label_logprobs(model: Any, tokenizer: Any, messages: Sequence[Mapping[str, str]],
                   labels: Sequence[str], adapter: str | None = None) -> dict[str, float]:
    """log P(label + end of turn | prompt) for each label, all labels in one forward pass
    (with a PeftModel of load_adapters: through `adapter`).

    The prompt loses tokens from its start when it would not fit the model's context with the
    longest label: small CPU models have a few hundred positions, and the request is at the end.
    """
    import torch

    prompt = chat_ids(tokenizer, messages)
    answers = [tokenizer(label + EOT, add_special_tokens=False)["input_ids"] for label in labels]
    room = context_length(model) - max(len(a) for a in answers)
    prompt = prompt[-room:]
    rows = [prompt + a for a in answers]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=model.device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=model.device)
    with torch.inference_mode():
        named = {"adapter_names": [adapter] * len(rows)} if adapter else {}
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, **named).logits.float(),
                                 -1)
    scores = {}
    for i, (label, answer) in enumerate(zip(labels, answers)):
        positions = range(len(prompt) - 1, len(prompt) - 1 + len(answer))
        scores[label] = float(sum(logp[i, p, t] for p, t in zip(positions, answer)))
    return scores
