#!/usr/bin/env python3
"""The PyTorch + peft side of benches/train_step.rs: the same LoRA optimizer step
(forward, backward, global-norm clip 1.0, AdamW lr 5e-3) on the same model sizes and
batch shapes, on CPU, single process, float32, in eager mode AND under torch.compile
(inductor), the two ways a PyTorch user runs it. Prints milliseconds per step (median
of the steady steps; the compile warm-up is excluded and reported apart). With
`--device cuda` the same on the GPU (every timed step waits for the device), to set
beside `GOOSEPIPE_BENCH_DEVICE=cuda:0 cargo bench --features cuda --bench train_step`.

    python3 -m venv /work/.venv-ref && /work/.venv-ref/bin/pip install torch transformers peft
    /work/.venv-ref/bin/python scripts/bench_torch_train_step.py [--threads 2] [--steps 20]

The model is randomly initialised (numbers do not depend on weights); LoRA rank 16 on
every linear of attention and feed-forward (q k v o wi_0 wi_1 wo), as goosepipe does;
no dropout (the quickstart trains without it, and so does benches/train_step.rs).
Measure it right after `cargo bench --bench train_step` on the same machine and write
both into benches/README.md with the CPU model (lscpu).
"""
import argparse
import statistics
import time

from bench_common import cpu_model
import torch
from peft import LoraConfig, get_peft_model
from transformers import T5Config, T5ForConditionalGeneration

SIZES = [
    # name, d_model, d_ff, layers, heads, d_kv, vocab, batch, src, tgt
    ("quickstart_d128_2x2_b32x32", 128, 256, 2, 4, 32, 512, 32, 32, 16),
    ("t5small_d512_8x8_b8x128", 512, 1024, 8, 6, 64, 32128, 8, 128, 32),
]


def setup(device, d, ff, layers, heads, dkv, vocab, batch, src, tgt):
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=vocab, d_model=d, d_ff=ff, num_layers=layers, num_decoder_layers=layers,
                   num_heads=heads, d_kv=dkv, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                   tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(cfg)
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0,
                      target_modules=["q", "k", "v", "o", "wi_0", "wi_1", "wo"])
    model = get_peft_model(model, lora).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-3, eps=1e-8, weight_decay=0.0)
    x = torch.randint(2, vocab, (batch, src), device=device)
    y = torch.randint(2, vocab, (batch, tgt), device=device)
    return model, params, opt, x, y


def measure(step, warmup, steps, wait):
    t = time.perf_counter()
    for _ in range(warmup):
        step()
    wait()
    warm = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        wait()
        times.append(time.perf_counter() - t)
    return warm, statistics.median(times), min(times), max(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--only", choices=["eager", "compile"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    ap.add_argument("--size", help="only the sizes whose name contains this (e.g. quickstart), "
                    "for short interleaved runs against cargo bench on a noisy machine")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        # TF32 stays off, as in goosepipe's float32 products.
        torch.backends.cuda.matmul.allow_tf32 = False
        where = f"{torch.cuda.get_device_name(device)}, CPU {cpu_model()}"
        wait = lambda: torch.cuda.synchronize(device)  # noqa: E731
    else:
        where = f"{cpu_model()}, {args.threads} threads"
        wait = lambda: None  # noqa: E731
    print(f"# {where}, torch {torch.__version__}")
    for name, *shape in SIZES:
        if args.size and args.size not in name:
            continue
        for mode in ["eager", "compile"]:
            if args.only and mode != args.only:
                continue
            model, params, opt, x, y = setup(device, *shape)

            # What a user writes: torch.compile(model); the backward is compiled with it.
            run = torch.compile(model) if mode == "compile" else model

            def step():
                opt.zero_grad(set_to_none=True)
                run(input_ids=x, labels=y).loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()

            # Compilation (and its recompiles) happens in the first steps.
            warm, med, lo, hi = measure(step, 3, args.steps, wait)
            print(f"{name} {mode}: {med * 1e3:.1f} ms/step (median of {args.steps}; "
                  f"min {lo * 1e3:.1f}, max {hi * 1e3:.1f}; first 3 steps {warm:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
