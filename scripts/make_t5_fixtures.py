#!/usr/bin/env python3
"""Regenerate the tiny T5 parity fixtures under tests/fixtures/t5/ (run by hand, not by CI).

Reference environment (about 2 minutes and 5.6 GB, CPU torch is enough):
    python3 -m venv /work/.venv-ref
    /work/.venv-ref/bin/pip install torch transformers safetensors numpy sentencepiece protobuf
    /work/.venv-ref/bin/python scripts/make_t5_fixtures.py

Made with transformers 5.23 / torch 2.15. Writes two HF folders (config.json + model.safetensors):
  v1_1/  T5.1.1 family: gated-gelu, untied lm_head (transformers 5 ties on save unless lm_head.weight
         is replaced by a new Parameter first), no logit scaling.
  orig/  original T5 family: relu FFN, tied head, logits scaled by d_model^-0.5.
  orig_bin/  the same orig weights as pytorch_model.bin (pickle), embedding only as encoder.embed_tokens.weight.
and, per folder, inputs.safetensors (input_ids, attention_mask, decoder_input_ids, labels with -100)
and reference.safetensors (encoder_last_hidden_state, logits, loss).
For v1_1 it also writes three LoRA experts and their gate vectors in goosepipe's expert-file naming
(`<module>.lora_A` [r, d_in], `<module>.lora_B` [d_out, r], `<module>.gate` [d_in]) and references for:
  lora_logits    one LoRA on every linear:  y = W u + u A^T B^T / r
  gated_logits   gated LoRA:                y = W u + sigmoid(v.u) u A^T B^T / r
  routed_logits  PHATGOOSE top-2 routing over the three experts with their gates as router embeddings
all computed in torch with forward hooks on the stock HF model.
"""
import json
import os
import re

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import T5Config, T5ForConditionalGeneration

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "t5")
LINEAR_RE = re.compile(r"(SelfAttention|EncDecAttention|DenseReluDense)\.(q|k|v|o|wi|wi_0|wi_1|wo)$")
RANK = 4
EXPERTS = ["expert_a", "expert_b", "expert_c"]


def make_model(ff, untied, seed):
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=128, d_model=32, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
        feed_forward_proj=ff, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
        eos_token_id=1, tie_word_embeddings=not untied,
    )
    m = T5ForConditionalGeneration(cfg).eval()
    if untied:
        m.lm_head.weight = torch.nn.Parameter(torch.randn(cfg.vocab_size, cfg.d_model))
    return m


def make_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    b, s, t = 3, 20, 20
    input_ids = torch.randint(2, 128, (b, s), generator=g)
    attention_mask = torch.ones(b, s, dtype=torch.long)
    for i, n in enumerate([20, 13, 9]):
        input_ids[i, n:] = 0
        attention_mask[i, n:] = 0
        input_ids[i, n - 1] = 1
    labels = torch.randint(2, 128, (b, t), generator=g)
    for i, n in enumerate([20, 17, 6]):
        labels[i, n - 1] = 1
        labels[i, n:] = -100
    decoder_input_ids = torch.zeros_like(labels)
    decoder_input_ids[:, 1:] = labels[:, :-1]
    decoder_input_ids[decoder_input_ids == -100] = 0
    return dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, labels=labels)


def linears(m):
    return {n: mod for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear) and LINEAR_RE.search(n)}


def run(m, inp):
    with torch.no_grad():
        out = m(**inp)
    return out


def ln(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-5)


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, ff, untied, seed in [("v1_1", "gated-gelu", True, 1), ("orig", "relu", False, 2)]:
        d = os.path.join(OUT, name)
        m = make_model(ff, untied, seed)
        m.save_pretrained(d)
        for extra in ["generation_config.json"]:
            p = os.path.join(d, extra)
            if os.path.exists(p):
                os.remove(p)
        inp = make_inputs(seed + 10)
        out = run(m, inp)
        save_file({k: v.contiguous() for k, v in inp.items()}, os.path.join(d, "inputs.safetensors"))
        with torch.no_grad():
            gen = m.generate(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"],
                             max_new_tokens=12, do_sample=False, num_beams=1)
        ref = {
            "generated": gen,
            "encoder_last_hidden_state": out.encoder_last_hidden_state,
            "logits": out.logits,
            "loss": out.loss.reshape(1),
        }
        if name == "orig":
            save_pickle_copy(m, d)
        if name == "v1_1":
            make_tokenizer(os.path.join(d, "tokenizer.json"))
            ref.update(adapter_references(m, inp, d))
        save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(d, "reference.safetensors"))
        print(name, "loss", out.loss.item(), "config", json.load(open(os.path.join(d, "config.json"))).get("scale_decoder_outputs"))


def save_pickle_copy(m, d):
    """orig_bin/: the orig model as an old-style pytorch_model.bin (no safetensors) whose embedding is
    stored only as encoder.embed_tokens.weight, as in early HF checkpoints; it shares orig's references."""
    out = os.path.join(os.path.dirname(d), "orig_bin")
    os.makedirs(out, exist_ok=True)
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    for k in ["shared.weight", "decoder.embed_tokens.weight", "lm_head.weight"]:
        sd.pop(k, None)
    torch.save(sd, os.path.join(out, "pytorch_model.bin"))
    with open(os.path.join(d, "config.json")) as src, open(os.path.join(out, "config.json"), "w") as dst:
        dst.write(src.read())


CORPUS = [
    "the cat sat on the mat", "a dog ran in the park", "is the sky blue today",
    "yes", "no", "maybe", "the answer is yes", "the answer is no", "red green blue",
    "one two three four five", "premise: it rained. hypothesis: the ground is wet.",
]


def make_tokenizer(path):
    """A tiny T5-style Unigram tokenizer (pad 0, eos 1, unk 2; `$A </s>`) within the 128-id vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=100, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    assert tok.get_vocab_size() <= 128, tok.get_vocab_size()
    assert tok.token_to_id("</s>") == 1 and tok.token_to_id("<pad>") == 0
    tok.save(path)


def adapter_references(m, inp, d):
    lin = linears(m)
    assert len(lin) == 2 * 7 + 2 * 11, len(lin)
    g = torch.Generator().manual_seed(123)
    experts = {}
    gates = {}
    for e in EXPERTS:
        experts[e] = {}
        gates[e] = {}
        for n, mod in lin.items():
            din, dout = mod.in_features, mod.out_features
            experts[e][n] = (torch.randn(RANK, din, generator=g) * 0.3, torch.randn(dout, RANK, generator=g) * 0.3)
            gates[e][n] = torch.randn(din, generator=g) * 0.5
        tensors = {}
        for n, (a, b) in experts[e].items():
            tensors[f"{n}.lora_A"] = a
            tensors[f"{n}.lora_B"] = b
        meta = {"format": "pt", "goosepipe.kind": "lora", "goosepipe.rank": str(RANK), "goosepipe.base_model": "fixture:v1_1"}
        save_file(tensors, os.path.join(d, f"{e}.safetensors"), metadata=meta)
        gmeta = {"format": "pt", "goosepipe.kind": "gate", "goosepipe.base_model": "fixture:v1_1"}
        save_file({f"{n}.gate": v for n, v in gates[e].items()}, os.path.join(d, f"{e}.gates.safetensors"), metadata=gmeta)

    def with_hooks(fn):
        hs = [mod.register_forward_hook(lambda mod, args, out, n=n: out + fn(n, args[0])) for n, mod in lin.items()]
        try:
            return run(m, inp).logits
        finally:
            for h in hs:
                h.remove()

    def lora(e, n, u):
        a, b = experts[e][n]
        return u @ a.T @ b.T / RANK

    def gated(n, u):
        return torch.sigmoid(u @ gates["expert_a"][n]).unsqueeze(-1) * lora("expert_a", n, u)

    def routed(n, u):
        v = torch.stack([gates[e][n] for e in EXPERTS])  # [N, d]
        s = ln(u) @ ln(v).T / u.shape[-1] ** 0.5
        p = s.softmax(-1)
        top = p.topk(2, dim=-1)
        w = top.values / (top.values.sum(-1, keepdim=True) + 1e-6)
        outs = torch.stack([lora(e, n, u) for e in EXPERTS], dim=-2)  # [..., N, dout]
        chosen = torch.gather(outs, -2, top.indices.unsqueeze(-1).expand(*top.indices.shape, outs.shape[-1]))
        return (w.unsqueeze(-1) * chosen).sum(-2)

    def merged(n, u):
        return sum(lora(e, n, u) for e in EXPERTS) / len(EXPERTS)

    return {
        "lora_logits": with_hooks(lambda n, u: lora("expert_a", n, u)),
        "gated_logits": with_hooks(gated),
        "routed_logits": with_hooks(routed),
        "merged_logits": with_hooks(merged),
    }


if __name__ == "__main__":
    main()
