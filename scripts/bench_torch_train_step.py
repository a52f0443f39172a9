#!/usr/bin/env python3
"""The PyTorch + peft side of benches/train_step.rs: the same LoRA optimizer step
(forward, backward, global-norm clip 1.0, AdamW lr 5e-3) on the same model sizes and
batch shapes, on CPU, single process, float32. Prints steps per second per size.

    pip install torch --index-url https://download.pytorch.org/whl/cpu
    pip install transformers peft
    python3 scripts/bench_torch_train_step.py [--threads 2] [--steps 10]

The model is randomly initialised (numbers do not depend on weights); LoRA rank 16 on
every linear of attention and feed-forward (q k v o wi_0 wi_1 wo), as goosepipe does.
"""
import argparse
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import T5Config, T5ForConditionalGeneration

SIZES = [
    # name, d_model, d_ff, layers, heads, d_kv, vocab, batch, src, tgt
    ("quickstart_d128_2x2_b32x32", 128, 256, 2, 4, 32, 512, 32, 32, 16),
    ("t5small_d512_8x8_b8x128", 512, 1024, 8, 6, 64, 32128, 8, 128, 32),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name, d, ff, layers, heads, dkv, vocab, batch, src, tgt in SIZES:
        cfg = T5Config(vocab_size=vocab, d_model=d, d_ff=ff, num_layers=layers, num_decoder_layers=layers,
                       num_heads=heads, d_kv=dkv, feed_forward_proj="gated-gelu", dropout_rate=0.1,
                       tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        model = T5ForConditionalGeneration(cfg)
        lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0,
                          target_modules=["q", "k", "v", "o", "wi_0", "wi_1", "wo"])
        model = get_peft_model(model, lora)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=5e-3, eps=1e-8, weight_decay=0.0)
        x = torch.randint(2, vocab, (batch, src))
        y = torch.randint(2, vocab, (batch, tgt))

        def step():
            opt.zero_grad(set_to_none=True)
            loss = model(input_ids=x, labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        for _ in range(2):
            step()
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        dt = (time.perf_counter() - t) / args.steps
        print(f"{name}: {dt * 1000:.1f} ms/step, {1 / dt:.2f} steps/s (torch {torch.__version__}, {args.threads} threads)")


if __name__ == "__main__":
    main()
