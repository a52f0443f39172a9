#!/usr/bin/env python3
"""The PyTorch side of benches/eval_throughput.rs: rank-classification scoring of a
task's examples with a PHATGOOSE-routed pool (top-2 per token and module), written in
plain PyTorch from the routing formula (METHOD.md section 3, and the `phatgoose.json`
that `goosepipe export` writes beside each expert), on CPU, float32, eager and (with
--compile) under torch.compile. Prints examples per second (median of the timed passes
over all examples) and the accuracy, which must equal goosepipe's on the same examples.

    # after `goosepipe run pipelines/quickstart.kdl`:
    for e in reverse sort shift dedup every-other count; do
        goosepipe export expert:$e /tmp/qsx/$e; done
    python scripts/bench_torch_eval.py --experts /tmp/qsx/* \
        --examples "$(goosepipe show dataset:sort-test --path)/examples.jsonl"

The model comes from the first expert's base-model/ folder (or --model). Scoring is
goosepipe's: each (example, choice) pair is one row of a batch of --batch rows; the
distinct inputs of a batch are encoded once; a choice's score is the mean
log-probability of its tokens plus EOS; the highest-scoring choice is the prediction.

`--vectors sign|mean|sign-mean` (with `--means`, the experts' average-activation
`embeddings.safetensors`) swaps the router vectors under the same formula: the
measurement behind pipelines/README.md's "what separates the two routers";
`--vectors centered` removes what the pool's gates share, and `--sharpen F` multiplies
the routing scores (both diagnostics of issue 18, not the paper's formula).
"""
import argparse
import json
import os
import statistics
import time

from bench_common import cpu_model
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import T5ForConditionalGeneration


def standardize(x):
    # torch LayerNorm without scale or bias, eps 1e-5, over the last dimension.
    return F.layer_norm(x, (x.shape[-1],), eps=1e-5)


def corr(a, b):
    """Pearson correlation of two vectors, as routing sees them (both standardized)."""
    return float((standardize(a) * standardize(b)).mean())


class RoutedLinear(torch.nn.Module):
    """W u + sum over the top-k experts z of w_z * (B_z A_z u) * scaling, with the
    experts scored by standardize(u) . standardize(gate_z) / sqrt(d_in)."""

    def __init__(self, base, a, b, gates, scaling, top_k, sharpen=1.0):
        super().__init__()
        self.base = base
        self.a = a  # [N, r, d_in]
        self.b = b  # [N, d_out, r]
        self.gates = standardize(gates)  # [N, d_in]
        self.scaling = scaling
        self.top_k = min(top_k, gates.shape[0])
        self.scale = sharpen / gates.shape[1] ** 0.5
        # With keep_weights, the last forward's routing weights stay in last_weights
        # (scripts/gate_retrain.py reads the own expert's share from them).
        self.keep_weights = False
        self.last_weights = None

    @property
    def weight(self):
        # transformers' T5 reads `wo.weight` for its dtype.
        return self.base.weight

    def forward(self, u):
        y = self.base(u)
        scores = standardize(u) @ self.gates.t() * self.scale  # [..., N]
        p = scores.softmax(-1)
        top, idx = p.topk(self.top_k, dim=-1)
        w = torch.zeros_like(p).scatter(-1, idx, top / (top.sum(-1, keepdim=True) + 1e-6))
        if self.keep_weights:
            self.last_weights = w
        # Every expert's low-rank product (N is small), weighted; unchosen weigh 0.
        h = torch.einsum("...d,nrd->...nr", u, self.a)
        delta = torch.einsum("...nr,nor->...no", h, self.b)
        return y + (delta * w.unsqueeze(-1)).sum(-2) * self.scaling


def router_vectors(gates, means, how):
    """The router vectors to score with: the trained gates, their signs, the experts'
    mean activations (average activation), or the gates' signs with the mean
    activations' magnitudes (the swaps of pipelines/README.md)."""
    if how == "gates":
        return gates
    if how == "sign":
        return {k: v.sign() for k, v in gates.items()}
    if how == "centered":
        return gates  # centred across the pool in load_pool, once every expert is read
    if means is None:
        raise SystemExit(f"--vectors {how} needs --means")
    if how == "mean":
        return {k: means[k] for k in gates}
    return {k: gates[k].sign() * means[k].abs() for k in gates}


def load_pool(dirs, means=None, how="gates"):
    experts = []
    for i, d in enumerate(dirs):
        conf = json.load(open(os.path.join(d, "adapter_config.json")))
        scaling = conf["lora_alpha"] / (conf["r"] ** 0.5 if conf.get("use_rslora") else conf["r"])
        weights = load_file(os.path.join(d, "adapter_model.safetensors"))
        gates = load_file(os.path.join(d, "phatgoose_gates.safetensors"))
        lora = {}
        for name, t in weights.items():
            module = name.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
            part = "a" if ".lora_A." in name else "b"
            lora.setdefault(module, {})[part] = t.float()
        m = None
        if means is not None:
            m = {k.removesuffix(".gate"): v.float() for k, v in load_file(means[i]).items()}
        vectors = router_vectors({k.removesuffix(".gate"): v.float() for k, v in gates.items()}, m, how)
        experts.append((scaling, lora, vectors))
    if how == "centered":
        # Each module's standardized gates minus their mean over the pool: what the
        # experts' gates share (the direction every gate learned) drops out.
        for m in experts[0][2]:
            std = [standardize(e[2][m]) for e in experts]
            mean = sum(std) / len(std)
            for e, s in zip(experts, std):
                e[2][m] = s - mean
    return experts


def replace_linear(model, module, make):
    """Put `make(linear)` in place of the model's linear named `module`; returns it."""
    parent_name, child = module.rsplit(".", 1)
    parent = model.get_submodule(parent_name)
    new = make(getattr(parent, child))
    setattr(parent, child, new)
    return new


def route_model(model, experts, top_k, sharpen=1.0):
    modules = sorted(experts[0][1])
    scalings = {e[0] for e in experts}
    if len(scalings) != 1:
        raise SystemExit("the experts have different LoRA scalings")
    scaling = scalings.pop()
    for m in modules:
        if any(m not in e[1] or m not in e[2] for e in experts):
            raise SystemExit(f"{m}: not every expert adapts it (this script routes full pools only)")
        a = torch.stack([e[1][m]["a"] for e in experts])
        b = torch.stack([e[1][m]["b"] for e in experts])
        g = torch.stack([e[2][m] for e in experts])
        replace_linear(model, m, lambda base: RoutedLinear(base, a, b, g, scaling, top_k, sharpen))
    return len(modules)


def encode(tok, text):
    return tok.encode(text).ids


def batches(items, batch):
    pairs = [(i, c) for i, it in enumerate(items) for c in it["choices"]]
    for s in range(0, len(pairs), batch):
        yield pairs[s:s + batch]


def score(model, items, batch, eos, pad=0, after_batch=None):
    """Mean log-probability of every choice (+EOS), goosepipe's batching. After each
    batch, `after_batch(mask, rows, labels)` (if given) sees the batch's encoder mask
    (one row per distinct input), the input row of every (example, choice) row, and
    the labels (-100 past each target)."""
    out = []
    for chunk in batches(items, batch):
        uniq = list(dict.fromkeys(i for i, _ in chunk))
        inputs = [items[i]["input"] for i in uniq]
        s = max(map(len, inputs))
        ids = torch.tensor([x + [pad] * (s - len(x)) for x in inputs])
        mask = (torch.arange(s)[None, :] < torch.tensor([len(x) for x in inputs])[:, None]).long()
        enc = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        rows = torch.tensor([uniq.index(i) for i, _ in chunk])
        targets = [c + [eos] for _, c in chunk]
        t = max(map(len, targets))
        labels = torch.tensor([x + [-100] * (t - len(x)) for x in targets])
        dec_in = torch.cat([torch.zeros(len(chunk), 1, dtype=torch.long), labels[:, :-1].clamp(min=0)], 1)
        logits = model(encoder_outputs=(enc[rows],), attention_mask=mask[rows], decoder_input_ids=dec_in).logits
        logp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        real = (labels != -100).float()
        out.extend(((logp * real).sum(1) / real.sum(1)).tolist())
        if after_batch is not None:
            after_batch(mask, rows, labels)
    return out


def accuracy(items, scores):
    right, k = 0, 0
    for it in items:
        n = len(it["choices"])
        mine = scores[k:k + n]
        k += n
        best = max(range(n), key=lambda j: (mine[j], -j))
        right += it["right"][best]
    return 100.0 * right / len(items)


def read_choice_items(tok, path, eos):
    """A choice task's examples.jsonl as token ids: the input (with EOS), each choice
    (without it: scoring appends it), and which choices are right."""
    items = []
    for line in open(path):
        e = json.loads(line)
        choices = []
        for c in e["choices"]:
            ids = encode(tok, c)
            if ids and ids[-1] == eos:
                ids = ids[:-1]
            choices.append(ids)
        items.append({"input": encode(tok, e["input"]), "choices": choices,
                      "right": [c == e["target"] for c in e["choices"]]})
    return items


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", nargs="+", required=True, help="PEFT folders exported by goosepipe (with gates)")
    ap.add_argument("--examples", nargs="+", required=True, help="examples.jsonl files of choice tasks")
    ap.add_argument("--model", help="the base model folder (default: the first expert's base-model/)")
    ap.add_argument("--batch", type=int, default=32, help="(example, choice) rows per batch (the eval's batch)")
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(model) (dynamic shapes)")
    ap.add_argument("--vectors", choices=["gates", "sign", "mean", "sign-mean", "centered"], default="gates",
                    help="router vectors: trained gates (PHATGOOSE), their signs, mean activations, signs with mean "
                         "magnitudes, or the standardized gates minus their mean over the pool")
    ap.add_argument("--sharpen", type=float, default=1.0,
                    help="multiply the routing scores (a diagnostic, not the paper's formula: 4 makes d_in 128 "
                         "score like d_in 2048 at the same correlation)")
    ap.add_argument("--means", nargs="+", help="embeddings.safetensors of the experts' average-activation steps, in --experts order")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = args.model or os.path.join(args.experts[0], "base-model")
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    model = T5ForConditionalGeneration.from_pretrained(model_dir).float().eval()
    eos = model.config.eos_token_id
    if args.means is not None and len(args.means) != len(args.experts):
        raise SystemExit("--means needs one file per expert, in --experts order")
    routed = route_model(model, load_pool(args.experts, args.means, args.vectors), args.top_k, args.sharpen)
    items = [it for f in args.examples for it in read_choice_items(tok, f, eos)]
    print(f"cpu: {cpu_model()}; torch {torch.__version__}; {args.threads} threads; "
          f"{len(args.experts)} experts, {routed} routed linears, top-{args.top_k}; "
          f"{len(items)} examples, {sum(len(i['choices']) for i in items)} choices, batch {args.batch}")
    variants = [("eager", model)]
    if args.compile:
        variants.append(("torch.compile", torch.compile(model, dynamic=True)))
    for name, m in variants:
        with torch.inference_mode():
            t0 = time.perf_counter()
            scores = score(m, items, args.batch, eos)
            first = time.perf_counter() - t0
            times = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                score(m, items, args.batch, eos)
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"{name}: {len(items) / med:.1f} examples/s (median of {args.rounds} passes, "
              f"{med * 1000:.0f} ms; first pass {first * 1000:.0f} ms); accuracy {accuracy(items, scores):.1f}")


if __name__ == "__main__":
    main()
