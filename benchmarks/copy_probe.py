"""In-context copying: can a model repeat what its context already holds? Random token spans are
shown twice; on the second copy a model with induction heads predicts each next token from the
first copy (top-1 copy accuracy near 1, loss far below the first copy's), one without cannot
(accuracy ~0, both losses alike). Grounded QA needs it: an answer's figure is a copy of the
document's.

Run: .venv/bin/python benchmarks/copy_probe.py runs/cpu-demo/bootstrap/base runs/cpu-demo/dpo/model

Measured on the demo's models (2026-12-06, stop 26): base, instruct, merged and the DPO expert all
0.00 top-1 copy accuracy, second-copy loss no lower than the first (10.4 vs 10.4 for base), so the
conversational expert's figures are resolved from its source line (datasets/tasks/grounding.py).
"""

from __future__ import annotations

import argparse
import json


def probe(model_dir: str, spans: int = 16, length: int = 50, seed: int = 0) -> dict:
    """First- and second-copy mean token loss and top-1 copy accuracy on repeated random spans."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(10, model.config.vocab_size, (spans, length), generator=generator)
    ids = torch.cat([first, first], dim=1)
    with torch.no_grad():
        logits = model(ids).logits[:, :-1]
    logps = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    second = slice(length, None)
    return {"model": model_dir, "loss_first_copy": round(-logps[:, :length - 1].mean().item(), 3),
            "loss_second_copy": round(-logps[:, second].mean().item(), 3),
            "copy_accuracy": round((logits[:, second].argmax(-1) == ids[:, length + 1:]
                                    ).float().mean().item(), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="Hugging Face model directories")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    for model in args.models:
        print(json.dumps(probe(model)))


if __name__ == "__main__":
    main()
