#!/usr/bin/env python3
"""Where each expert's trained gate is on (issue 18's "why the gates do not route").

PHATGOOSE trains expert z's gate v_z on z's data only, as `W u + sigmoid(v_z . u) B A u`
with everything else frozen. This script runs that same gated model (base + z's LoRA +
z's gate, PyTorch, from the folders `goosepipe export` writes) teacher-forced over the
test examples of every held-in task, and reports, for every expert and task, the mean
gate value sigmoid(v_z . u) over the task's real tokens and all adapted modules, and
the routing score the gate gives at inference (standardize(u) . standardize(v_z) /
sqrt(d), i.e. sqrt(d) times the Pearson correlation), averaged the same way.

A gate that tells its task apart is on (near 1) for its own task's tokens and lower on
the others'; a gate trained on positives alone may instead be on everywhere. The
routing-score table says whether the direction it learned scores its own task higher
than the other experts' gates do (that column-wise comparison is what routing uses).

    for e in reverse sort shift dedup every-other count; do
        goosepipe export expert:$e /tmp/qsx/$e; done
    python scripts/gate_activity.py --experts /tmp/qsx/{reverse,sort,shift,dedup,every-other,count} \
        --examples $(for t in reverse sort shift dedup every-other count; do
            echo "$(goosepipe show dataset:$t-test --path)/examples.jsonl"; done)

Tasks are named after their examples file's folder unless --names is given, in the
order of --examples; the i-th task is owned by the i-th expert.
"""
import argparse
import os

import torch
from bench_common import cpu_model, read_pairs
from bench_torch_eval import load_pool, replace_linear, standardize
from transformers import T5ForConditionalGeneration


class GatedProbe(torch.nn.Module):
    """W u + sigmoid(v . u) * (B A u) * scaling (gate training's forward); with
    `record`, it keeps the gate value and the routing score of every token it sees.
    `gate` may be a trainable parameter (scripts/gate_gradient.py)."""

    def __init__(self, base, a, b, gate, scaling, record=True):
        super().__init__()
        self.base, self.a, self.b, self.gate, self.scaling = base, a, b, gate, scaling
        self.std_gate = standardize(gate.detach()) if record else None
        self.records = []

    @property
    def weight(self):
        return self.base.weight

    def forward(self, u):
        g = torch.sigmoid(u @ self.gate)
        if self.std_gate is not None:
            score = standardize(u) @ self.std_gate / u.shape[-1] ** 0.5
            self.records.append((g.detach(), score.detach()))
        return self.base(u) + g.unsqueeze(-1) * (u @ self.a.t() @ self.b.t()) * self.scaling


def gated_model(model_dir, expert, dropout=None):
    """The base with one expert's LoRA behind a trainable gate at every adapted
    linear, each gate a zero vector (gate training's start; `dropout` sets T5's rate
    for training). Everything else is frozen. Returns the model and its gates."""
    scaling, lora, _ = expert
    extra = {} if dropout is None else {"dropout_rate": dropout}
    model = T5ForConditionalGeneration.from_pretrained(model_dir, **extra).float()
    for p in model.parameters():
        p.requires_grad_(False)
    gates = {
        m: replace_linear(model, m, lambda base: GatedProbe(
            base, lora[m]["a"], lora[m]["b"], torch.nn.Parameter(torch.zeros(base.weight.shape[1])), scaling,
            record=False)).gate
        for m in sorted(lora)
    }
    return model, gates


def write_expert_folder(src, out, gates):
    """An exported expert folder again under `out`, its files linked, its gates
    replaced by `gates` (module -> vector)."""
    import shutil

    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    for f in os.listdir(src):
        if f == "phatgoose_gates.safetensors":
            continue
        dst = os.path.join(out, f)
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        elif os.path.lexists(dst):
            os.remove(dst)
        os.symlink(os.path.join(os.path.abspath(src), f), dst)
    save_file({f"{m}.gate": v.contiguous() for m, v in gates.items()}, os.path.join(out, "phatgoose_gates.safetensors"))


def probe(model_dir, expert, tasks, eos, batch):
    scaling, lora, gates = expert
    model = T5ForConditionalGeneration.from_pretrained(model_dir).float().eval()
    probes = {
        m: replace_linear(model, m, lambda base: GatedProbe(base, lora[m]["a"], lora[m]["b"], gates[m], scaling))
        for m in sorted(lora)
    }
    out = []
    for items in tasks:
        sums = torch.zeros(2)
        count = 0
        for s in range(0, len(items), batch):
            chunk = items[s:s + batch]
            for p in probes.values():
                p.records.clear()
            n_in = max(len(i["input"]) for i in chunk)
            ids = torch.tensor([i["input"] + [0] * (n_in - len(i["input"])) for i in chunk])
            enc_mask = ids.new_tensor([[1] * len(i["input"]) + [0] * (n_in - len(i["input"])) for i in chunk])
            targets = [i["target"] + [eos] for i in chunk]
            n_t = max(map(len, targets))
            dec_in = torch.tensor([[0] + t[:-1] + [0] * (n_t - len(t)) for t in targets])
            dec_mask = torch.tensor([[1] * len(t) + [0] * (n_t - len(t)) for t in targets])
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=enc_mask, decoder_input_ids=dec_in)
            for m, p in probes.items():
                # Modules that read the encoder's tokens (the encoder, cross-attention
                # k and v) see [B, n_in]; the rest of the decoder sees [B, n_t].
                for g, sc in p.records:
                    reads_encoder = m.startswith("encoder") or m.endswith(("EncDecAttention.k", "EncDecAttention.v"))
                    real = (enc_mask if reads_encoder else dec_mask).bool()
                    sums += torch.stack([g[real].sum(), sc[real].sum()])
                    count += int(real.sum())
        out.append((sums / count).tolist())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", nargs="+", required=True, help="PEFT folders exported by goosepipe (with gates)")
    ap.add_argument("--examples", nargs="+", required=True,
                    help="examples.jsonl of each expert's own task, in --experts order")
    ap.add_argument("--names", nargs="+", help="task names (default: each examples file's folder name)")
    ap.add_argument("--batch", type=int, default=32, help="examples per forward pass")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.names is not None and len(args.names) != len(args.examples):
        raise SystemExit("--names needs one name per examples file")
    if len(args.examples) != len(args.experts):
        raise SystemExit("one examples file per expert, in the same order (task i is owned by expert i)")
    torch.set_num_threads(args.threads)
    model_dir = os.path.join(args.experts[0], "base-model")
    read = [read_pairs(model_dir, open(f)) for f in args.examples]
    tasks, eos = [items for items, _ in read], read[0][1]
    names = args.names or [os.path.basename(os.path.dirname(f)) for f in args.examples]
    experts = [os.path.basename(d.rstrip("/")) for d in args.experts]
    pool = load_pool(args.experts)
    table = [probe(model_dir, e, tasks, eos, args.batch) for e in pool]
    print(f"cpu: {cpu_model()}; torch {torch.__version__}; rows: expert's gate, columns: task; "
          "mean over real tokens and modules")
    for k, title in [(0, "gate value sigmoid(v.u)"), (1, "routing score sqrt(d) * corr(u, v)")]:
        print(f"\n{title}\n\n| gate \\ task | " + " | ".join(names) + " | own | others |")
        print("|---|" + "---:|" * (len(names) + 2))
        for i, row in enumerate(table):
            own = row[i][k]
            others = sum(r[k] for j, r in enumerate(row) if j != i) / (len(row) - 1)
            cells = " | ".join((f"**{r[k]:.2f}**" if j == i else f"{r[k]:.2f}") for j, r in enumerate(row))
            print(f"| {experts[i]} | {cells} | {own:.2f} | {others:.2f} |")
    # Routing compares experts on the same token: on task i, is expert i's score the highest?
    print("\nper task, the experts' routing scores ranked (own expert's rank, 1 = top):")
    for j, n in enumerate(names):
        col = [table[i][j][1] for i in range(len(table))]
        rank = 1 + sum(c > col[j] for c in col)
        print(f"  {n}: own rank {rank} of {len(col)}; scores " + ", ".join(f"{experts[i]} {c:.2f}" for i, c in enumerate(col)))


if __name__ == "__main__":
    main()
