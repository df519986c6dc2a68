"""Train ``example:tiny-llama`` (:mod:`stages.load.tiny_llama`) deterministically, on the CPU.

The shipped files in ``stages/load/weights/tiny-llama/`` and the held-out text in
``stages/load/text/`` are what this script writes::

    python -m stages.load.train_tiny_llama            # writes into the package (about 7 min on 2 cores)
    python -m stages.load.train_tiny_llama --out DIR --heldout FILE --steps 50   # a quick try elsewhere

1. Corpus: :func:`stages.load.tiny_llama.stdlib_docstrings` of this interpreter (CPython 3.11.7 made
   the shipped files); 10% held out by SHA-1 (:func:`~stages.load.tiny_llama.is_heldout`), another 10%
   for validation (:func:`~stages.load.tiny_llama.is_validation`: its perplexity every 100 steps chose
   the step count), the rest trains.
2. Tokenizer: byte-level BPE (``tokenizers``), 2048 tokens, trained on the training docstrings;
   specials ``<pad>`` (0), ``<s>`` (1), ``</s>`` (2).
3. Model: ``LlamaForCausalLM`` from a config (4 layers, hidden 192, 6 query heads / 2 key-value heads
   of 32, FFN 512, tied embeddings). Training stream: every training docstring's tokens then
   ``</s>``; batches of 32 random windows of 128 tokens (seeded generator); AdamW (lr 3e-3, betas
   0.9 / 0.95, weight decay 0.1, gradient clip 1.0), 100 warm-up steps then cosine to 10%.
4. Saved in float16 (``model.safetensors``); ``training.json`` records the settings, the corpus's
   digest, the loss curve, the held-out perplexity of the saved (float16-rounded) weights and the
   wall time.

Deterministic: seeded weights and batches, ``torch.use_deterministic_algorithms``, a fixed thread
count (``--threads``, default 2); the same interpreter, torch and transformers versions give the
same files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from stages.load.tiny_llama import heldout_file, is_heldout, is_validation, model_folder, stdlib_docstrings

SEQ = 128
VOCAB = 2048
SPECIALS = ("<pad>", "<s>", "</s>")


def llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=VOCAB, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                       num_attention_heads=6, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                       rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, use_cache=False,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)


def train_tokenizer(docs: list[str]):
    """A byte-level BPE of :data:`VOCAB` tokens on ``docs``, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def token_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for d in docs:
        ids += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def perplexity(model, stream: torch.Tensor) -> float:
    n = (len(stream) - 1) // SEQ
    nll = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, n, 32):
            rows = torch.stack([stream[j * SEQ:(j + 1) * SEQ + 1] for j in range(i, min(n, i + 32))])
            logits = model(input_ids=rows[:, :-1]).logits
            nll += float(F.cross_entropy(logits.reshape(-1, VOCAB), rows[:, 1:].reshape(-1), reduction="sum"))
    return math.exp(nll / (n * SEQ))


def train(args: argparse.Namespace) -> dict:
    from transformers import LlamaForCausalLM

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    docs = stdlib_docstrings()
    held = [d for d in docs if is_heldout(d)]
    val = [d for d in docs if not is_heldout(d) and is_validation(d)]
    train_docs = [d for d in docs if not is_heldout(d) and not is_validation(d)]
    tokenizer = train_tokenizer(train_docs)
    stream, held_stream = token_stream(tokenizer, train_docs), token_stream(tokenizer, held)
    val_stream = token_stream(tokenizer, val)
    val_ppl = []
    model = LlamaForCausalLM._from_config(llama_config(), attn_implementation="eager", dtype=torch.float32)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(args.seed)
    losses, t0 = [], time.time()
    for step in range(args.steps):
        warm = min(1.0, (step + 1) / 100)
        cos = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for pg in opt.param_groups:
            pg["lr"] = args.lr * warm * cos
        starts = torch.randint(0, len(stream) - SEQ - 1, (args.batch,), generator=g)
        rows = torch.stack([stream[s:s + SEQ + 1] for s in starts.tolist()])
        model.train()
        logits = model(input_ids=rows[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), rows[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(round(loss.item(), 4))
        if (step + 1) % 100 == 0 or step == args.steps - 1:
            val_ppl.append(round(perplexity(model, val_stream), 3))
            print(f"step {step + 1:5d} loss {loss.item():.3f} validation perplexity {val_ppl[-1]:.2f} "
                  f"({time.time() - t0:.0f}s)", flush=True)
    model = model.half().float()  # what ships: float16 weights
    return {"model": model, "tokenizer": tokenizer, "held": held, "record": {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "heldout")},
        "corpus": {"docstrings": len(docs), "train": len(train_docs), "validation": len(val), "heldout": len(held),
                   "train_tokens": len(stream), "heldout_tokens": len(held_stream),
                   "sha256": hashlib.sha256("\n".join(docs).encode()).hexdigest()},
        "params": sum(p.numel() for p in model.parameters()),
        "loss_every_100": losses[::100] + [losses[-1]],
        "validation_perplexity_every_100": val_ppl,
        "heldout_perplexity": round(perplexity(model, held_stream), 3),
        "train_perplexity_sample": round(perplexity(model, stream[:len(held_stream)]), 3),
        "wall_s": round(time.time() - t0, 1),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__}}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=model_folder())
    ap.add_argument("--heldout", type=Path, default=heldout_file())
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    res = train(args)
    args.out.mkdir(parents=True, exist_ok=True)
    res["model"].half().save_pretrained(args.out, safe_serialization=True)
    res["tokenizer"].save_pretrained(args.out)
    (args.out / "training.json").write_text(json.dumps(res["record"], indent=1) + "\n")
    args.heldout.parent.mkdir(parents=True, exist_ok=True)
    args.heldout.write_text("\n".join(res["held"]) + "\n", encoding="utf-8")
    rec = res["record"]
    print(f"held-out perplexity {rec['heldout_perplexity']}, {rec['params'] / 1e6:.2f} M params, "
          f"{rec['wall_s']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
