#!/usr/bin/env python3
"""Which way a gate starts to move (issue 18: what sets a trained gate's direction).

Gate training starts every gate at v = 0 (sigmoid 0.5) and moves it along minus the
gradient of the expert's own loss; with AdamW the first step is -lr * sign(gradient).
At v = 0 that gradient is sum_t c_t * u_t / 4: each token's input u_t weighed by how
much opening the gate there lowers the loss (c_t). This script computes it for each
expert over its own training examples (PyTorch, from the folders `goosepipe export`
writes), then compares, per module, its direction (after standardization) with the
trained gate's and with the expert's mean activation (average activation's router
vector), and writes each expert folder again under --out with the negated gradient in
place of the gates, so `bench_torch_eval.py --experts OUT/*` routes with it.

    T="reverse sort shift dedup every-other count"
    python scripts/gate_gradient.py --experts $(for t in $T; do echo /tmp/qsx/$t; done) \
        --train $(for t in $T; do echo "$(goosepipe show dataset:$t --path)/examples.jsonl"; done) \
        --means $(for t in $T; do echo "$(goosepipe show average-activation:$t --path)/embeddings.safetensors"; done) \
        --out /tmp/qsx-grad0
    python scripts/bench_torch_eval.py --experts $(for t in $T; do echo /tmp/qsx-grad0/$t; done) --examples ...
"""
import argparse
import os

import torch
from bench_common import cpu_model, read_pairs
from bench_torch_eval import corr, load_pool
from gate_activity import gated_model, write_expert_folder
from safetensors.torch import load_file


def gradient_at_zero(model_dir, expert, items, eos, batch):
    # Gate training's forward with every gate a trainable zero vector (no dropout).
    model, gates = gated_model(model_dir, expert)
    model.eval()
    for s in range(0, len(items), batch):
        chunk = items[s:s + batch]
        n_in = max(len(i["input"]) for i in chunk)
        ids = torch.tensor([i["input"] + [0] * (n_in - len(i["input"])) for i in chunk])
        mask = torch.tensor([[1] * len(i["input"]) + [0] * (n_in - len(i["input"])) for i in chunk])
        targets = [i["target"] + [eos] for i in chunk]
        n_t = max(map(len, targets))
        labels = torch.tensor([t + [-100] * (n_t - len(t)) for t in targets])
        # The loss of one batch of the whole set, each batch weighed by its size: the
        # gradient of the mean loss over all the examples' target tokens.
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss * len(chunk) / len(items)
        loss.backward()
    return {m: -g.grad.detach().clone() for m, g in gates.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", nargs="+", required=True, help="PEFT folders exported by goosepipe (with gates)")
    ap.add_argument("--train", nargs="+", required=True, help="each expert's training examples.jsonl, in --experts order")
    ap.add_argument("--means", nargs="+", required=True,
                    help="each expert's average-activation embeddings.safetensors, in --experts order")
    ap.add_argument("--examples", type=int, default=1024, help="training examples per expert (the paper's batch)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", required=True, help="folder for the expert folders with the gradient as gates")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not len(args.experts) == len(args.train) == len(args.means):
        raise SystemExit("--experts, --train and --means need one entry each per expert, in the same order")
    torch.set_num_threads(args.threads)
    model_dir = os.path.join(args.experts[0], "base-model")

    pool = load_pool(args.experts)
    print(f"cpu: {cpu_model()}; torch {torch.__version__}; {args.examples} training examples per expert")
    print("\n| expert | corr(gradient at 0, trained gate) | corr(gradient at 0, mean activation) | corr(trained gate, mean activation) |")
    print("|---|---:|---:|---:|")
    for d, expert, train, means in zip(args.experts, pool, args.train, args.means):
        items, eos = read_pairs(model_dir, open(train).readlines()[: args.examples])
        grad = gradient_at_zero(model_dir, expert, items, eos, args.batch)
        mean = {k.removesuffix(".gate"): v.float() for k, v in load_file(means).items()}
        trained = expert[2]
        cg = sum(corr(grad[m], trained[m]) for m in grad) / len(grad)
        cm = sum(corr(grad[m], mean[m]) for m in grad) / len(grad)
        tm = sum(corr(trained[m], mean[m]) for m in grad) / len(grad)
        name = os.path.basename(d.rstrip("/"))
        print(f"| {name} | {cg:.2f} | {cm:.2f} | {tm:.2f} |")
        write_expert_folder(d, os.path.join(args.out, name), grad)


if __name__ == "__main__":
    main()
