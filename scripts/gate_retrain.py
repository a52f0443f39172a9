#!/usr/bin/env python3
"""Train the PHATGOOSE gates a second time, independently of goosepipe (issue 18: is
goosepipe's gate training what makes the router weak?).

The gradient checks (tests/model_grad.rs) and the routing formula's PyTorch twin
(bench_torch_eval.py) cover one step and the scoring; this covers the whole gate
training: data, truncation, dropout, optimiser, schedule, clipping. For each expert
folder `goosepipe export` wrote, it trains fresh gates in PyTorch the way the paper's
code does (METHOD.md section 2): transformers' T5 in train mode with the given dropout,
every adapted linear as `W u + sigmoid(v . u) * B A u * scaling` with v starting at 0,
only the gates trainable, AdamW (eps 1e-8, weight decay 0), linear warmup over 6% of
the steps then constant, global gradient-norm clip 1.0, the LM loss over the target
tokens plus EOS, batches drawn from seeded shuffles of the expert's training examples.

It then routes the pool twice under the same formula (bench_torch_eval.py), once with
goosepipe's gates and once with the PyTorch-trained ones, over each held-in task's test
examples (task i owned by expert i), and prints per task the rank-classification
accuracy and the own expert's share of the routing weight (real tokens, mean over
modules), plus per expert the correlation of the two gate sets (per module, after
standardization) and, per pool, the mean correlation between different experts' gates.
If the two gate sets route alike, goosepipe's gate training is not what holds the
router back; if the PyTorch gates route better, it is.

    T="reverse sort shift dedup every-other count"
    for e in $T; do goosepipe export expert:$e /tmp/q18/gp/$e; done
    python scripts/gate_retrain.py --experts $(for t in $T; do echo /tmp/q18/gp/$t; done) \\
        --train $(for t in $T; do echo "$(goosepipe show dataset:$t --path)/examples.jsonl"; done) \\
        --test $(for t in $T; do echo "$(goosepipe show dataset:$t-test --path)/examples.jsonl"; done) \\
        --steps 50 --batch 32 --lr 5e-3 --dropout 0.0 --max-input-len 32 --max-target-len 16 \\
        --out /tmp/q18/torch

The settings default to the quickstart's `gate` group; give the manifest's own.
"""
import argparse
import math
import os
import time

import torch
from bench_common import cpu_model, read_pairs
from bench_torch_eval import RoutedLinear, accuracy, corr, load_pool, read_choice_items, route_model, score
from gate_activity import gated_model, write_expert_folder
from tokenizers import Tokenizer
from transformers import T5ForConditionalGeneration


def truncate(ids, limit, eos):
    """goosepipe's truncation (src/train/batches.rs): cut to the limit, keep a final EOS."""
    return ids if len(ids) <= limit else ids[: limit - 1] + [eos]


def epoch_batches(items, size, how, gen):
    """One epoch's batches (index lists): a seeded shuffle cut in order (`random`), or
    goosepipe's length buckets (`bucketed`, src/train/batches.rs: the shuffle sorted by
    length inside windows of 50 batches, cut, and the batches shuffled)."""
    idx = torch.randperm(len(items), generator=gen).tolist()
    if how == "bucketed":
        window = 50 * size
        idx = [i for s in range(0, len(idx), window)
               for i in sorted(idx[s:s + window], key=lambda i: len(items[i]["input"]) + len(items[i]["target"]))]
    batches = [idx[s:s + size] for s in range(0, len(idx), size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def train_gates(model_dir, expert, items, eos, args, seed):
    model, gates = gated_model(model_dir, expert, dropout=args.dropout)
    model.train()  # dropout in T5's places, as the reference trains
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(gates.values(), lr=args.lr, eps=1e-8, weight_decay=0.0)
    warmup = max(1, math.ceil(args.warmup * args.steps))  # as src/train/schedule.rs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    gen = torch.Generator().manual_seed(seed)
    queue, losses = [], []
    for _ in range(args.steps):
        if not queue:
            queue = epoch_batches(items, args.batch, args.batching, gen)
        chunk = [items[i] for i in queue.pop()]
        inputs = [truncate(i["input"], args.max_input_len, eos) for i in chunk]
        targets = [truncate(i["target"] + [eos], args.max_target_len, eos) for i in chunk]
        n_in, n_t = max(map(len, inputs)), max(map(len, targets))
        ids = torch.tensor([x + [0] * (n_in - len(x)) for x in inputs])
        mask = torch.tensor([[1] * len(x) + [0] * (n_in - len(x)) for x in inputs])
        labels = torch.tensor([t + [-100] * (n_t - len(t)) for t in targets])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(gates.values()), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return {m: g.detach().clone() for m, g in gates.items()}, losses


def evaluate(model_dir, pool, tests, eos, top_k, batch):
    """Per task (task i owned by expert i): rank-classification accuracy, and the own
    expert's share of the routing weight over real tokens, averaged over modules."""
    model = T5ForConditionalGeneration.from_pretrained(model_dir).float().eval()
    route_model(model, pool, top_k)
    routed = {n: m for n, m in model.named_modules() if isinstance(m, RoutedLinear)}
    for m in routed.values():
        m.keep_weights = True
    out = []
    for owner, items in enumerate(tests):
        shares = []

        def own_share(mask, rows, labels):
            # The encoder ran once per distinct input; cross-attention k and v read
            # its tokens for every (example, choice) row; the rest of the decoder
            # reads the target tokens.
            for name, m in routed.items():
                if name.startswith("encoder."):
                    real = mask.bool()
                elif name.endswith(("EncDecAttention.k", "EncDecAttention.v")):
                    real = mask[rows].bool()
                else:
                    real = labels != -100
                shares.append(float(m.last_weights[..., owner][real].mean()))

        with torch.inference_mode():
            scores = score(model, items, batch, eos, after_batch=own_share)
        out.append((accuracy(items, scores), sum(shares) / len(shares)))
    return out


def pool_correlation(gate_sets):
    mods = sorted(gate_sets[0])
    vals = [corr(gate_sets[i][m], gate_sets[j][m])
            for m in mods for i in range(len(gate_sets)) for j in range(i + 1, len(gate_sets))]
    return sum(vals) / len(vals)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", nargs="+", required=True, help="PEFT folders exported by goosepipe (with gates)")
    ap.add_argument("--train", nargs="+", required=True, help="each expert's training examples.jsonl, in --experts order")
    ap.add_argument("--test", nargs="+", required=True, help="each expert's held-in test examples.jsonl (choice), in order")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--warmup", type=float, default=0.06)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--max-input-len", type=int, default=32)
    ap.add_argument("--max-target-len", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batching", choices=["random", "bucketed"], default="random",
                    help="random batches, or goosepipe's length buckets (same examples, other composition)")
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--eval-batch", type=int, default=32)
    ap.add_argument("--out", required=True, help="folder for the expert folders with the PyTorch-trained gates")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not len(args.experts) == len(args.train) == len(args.test):
        raise SystemExit("--experts, --train and --test need one entry each per expert, in the same order")
    for f in args.train + args.test:
        if not os.path.isfile(f):
            raise SystemExit(f"{f}: no such examples file")
    for d in args.experts:
        for f in ("adapter_config.json", "adapter_model.safetensors", "phatgoose_gates.safetensors", "base-model"):
            if not os.path.exists(os.path.join(d, f)):
                raise SystemExit(f"{d}: no {f} (export the expert with its gate: goosepipe export expert:NAME DIR)")
    torch.set_num_threads(args.threads)
    model_dir = os.path.join(args.experts[0], "base-model")
    names = [os.path.basename(d.rstrip("/")) for d in args.experts]
    pool = load_pool(args.experts)
    print(f"cpu: {cpu_model()}; torch {torch.__version__}; gates: {args.steps} steps x {args.batch}, "
          f"lr {args.lr}, dropout {args.dropout}, {args.batching} batches, seed {args.seed}")
    trained = []
    for i, (name, expert, train) in enumerate(zip(names, pool, args.train)):
        items, eos = read_pairs(model_dir, open(train))
        t0 = time.perf_counter()
        gates, losses = train_gates(model_dir, expert, items, eos, args, args.seed * 1000 + i)
        write_expert_folder(args.experts[i], os.path.join(args.out, name), gates)
        c = [corr(gates[m], expert[2][m]) for m in gates]
        print(f"  {name}: loss {losses[0]:.3f} -> {sum(losses[-5:]) / 5:.3f} in {time.perf_counter() - t0:.0f} s; "
              f"corr with goosepipe's gate per module: mean {sum(c) / len(c):.2f}, min {min(c):.2f}")
        trained.append(gates)
    print(f"\nmean correlation between different experts' gates: goosepipe {pool_correlation([e[2] for e in pool]):.2f}, "
          f"PyTorch {pool_correlation(trained):.2f}")
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tests = [read_choice_items(tok, f, eos) for f in args.test]
    ours = evaluate(model_dir, pool, tests, eos, args.top_k, args.eval_batch)
    theirs = evaluate(model_dir, load_pool([os.path.join(args.out, n) for n in names]), tests, eos,
                      args.top_k, args.eval_batch)
    print("\n| task | accuracy, goosepipe gates | accuracy, PyTorch gates | own share, goosepipe | own share, PyTorch |")
    print("|---|---:|---:|---:|---:|")
    for n, (a1, s1), (a2, s2) in zip(names, ours, theirs):
        print(f"| {n} | {a1:.1f} | {a2:.1f} | {s1:.2f} | {s2:.2f} |")
    k = len(names)
    print(f"| mean | {sum(a for a, _ in ours) / k:.1f} | {sum(a for a, _ in theirs) / k:.1f} | "
          f"{sum(s for _, s in ours) / k:.2f} | {sum(s for _, s in theirs) / k:.2f} |")


if __name__ == "__main__":
    main()
