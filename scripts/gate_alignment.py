#!/usr/bin/env python3
"""Do a pool's gates point at their own experts' inputs? (issue 18)

PHATGOOSE routes a token by the cosine (after standardization) between its activation
and each expert's gate; average activation routes by the same formula with each
expert's mean input activation in place of the gate. So a gate routes like average
activation only as far as it points along its own expert's mean activation and away
from the others'. Per adapted module this prints, after standardizing both vectors:
the cosine of each gate with its own expert's mean activation and with the other
experts' means, how often a gate is closest to its own expert's mean (chance: 1/N),
and how alike the mean activations are among themselves. Encoder and decoder apart.

    T="reverse-s1 sort-s1 shift-s1 dedup-s1 every-other-s1 count-s1"
    python3 scripts/gate_alignment.py \
        --gates $(for t in $T; do echo "$(goosepipe show gate:$t --path)/gates.safetensors"; done) \
        --means $(for t in $T; do echo "$(goosepipe show average-activation:$t --path)/embeddings.safetensors"; done)

Needs numpy and safetensors only. The two lists name the same experts in the same order.
"""
import argparse

import numpy as np
from safetensors.numpy import load_file


def standardize(v):
    v = v.astype(np.float64).ravel()
    v = v - v.mean()
    return v / (np.linalg.norm(v) + 1e-12)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gates", nargs="+", required=True, help="gates.safetensors of each expert")
    ap.add_argument("--means", nargs="+", required=True,
                    help="embeddings.safetensors of each expert's average-activation step, same order")
    args = ap.parse_args()
    if len(args.gates) != len(args.means):
        ap.error(f"{len(args.gates)} gate files but {len(args.means)} mean-activation files")
    n = len(args.gates)
    if n < 2:
        ap.error("a pool needs at least two experts")
    def load(path):
        try:
            return load_file(path)
        except Exception as e:  # OSError, or safetensors' own error for a bad header
            ap.error(f"cannot read {path}: {e}")

    gates = [load(p) for p in args.gates]
    means = [load(p) for p in args.means]
    modules = sorted(set(gates[0]).intersection(*gates[1:], *means))
    if not modules:
        ap.error("the gate and mean-activation files share no module name")
    off = ~np.eye(n, dtype=bool)
    print(f"{n} experts, {len(modules)} modules; chance of a gate being closest to its own mean: {1 / n:.2f}")
    print("| part | gate . own mean | gate . other means | closest to own | means among themselves |")
    print("|---|---:|---:|---:|---:|")
    for part in ("encoder", "decoder", "all"):
        own, other, closest, mutual = [], [], [], []
        for m in modules:
            if part != "all" and not m.startswith(part):
                continue
            g = np.stack([standardize(x[m]) for x in gates])
            a = np.stack([standardize(x[m]) for x in means])
            c = g @ a.T
            own.extend(np.diag(c))
            other.extend(c[off])
            closest.extend(np.argmax(c, axis=1) == np.arange(n))
            mutual.extend((a @ a.T)[off])
        if own:
            print(f"| {part} | {np.mean(own):.3f} | {np.mean(other):.3f} | {np.mean(closest):.2f} | {np.mean(mutual):.3f} |")


if __name__ == "__main__":
    main()
