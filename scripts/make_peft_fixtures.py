#!/usr/bin/env python3
"""PEFT LoRA adapters on the tiny T5.1.1 fixture, with reference logits from transformers + peft
(run by hand, not by CI; the Rust tests in tests/peft.rs read what it writes).

Reference environment (as scripts/make_t5_fixtures.py, plus peft):
    python3 -m venv /work/.venv-ref
    /work/.venv-ref/bin/pip install torch transformers peft safetensors numpy
    /work/.venv-ref/bin/python scripts/make_peft_fixtures.py

Made with peft 0.21 / transformers 5.24 / torch 2.15. Writes tests/fixtures/peft/:
  alpha/      r 4, lora_alpha 16 (scaling 4), every linear by short names, adapter_model.safetensors
  rslora/     r 8, lora_alpha 8, use_rslora (scaling 8/sqrt(8)), every linear
  attention/  r 4, lora_alpha 8, target_modules a regex matching the attention q and v only
  bin/        r 2, lora_alpha 4, q/wi_0/wo, stored as adapter_model.bin (pickle), as older repos
  reference.safetensors   <name>_logits: the PeftModel's logits on tests/fixtures/t5/v1_1/inputs
Random nonzero A and B (PEFT initialises B to zero, which would prove nothing).

By hand, the other direction (an export of goosepipe's expert_a fixture must load in peft and
give the torch-hook LoRA logits that tests/model_parity.rs checks goosepipe against):
    goosepipe export tests/fixtures/t5/v1_1/expert_a.safetensors --format peft /tmp/expert_a-peft
    /work/.venv-ref/bin/python scripts/make_peft_fixtures.py --check-export /tmp/expert_a-peft
Last checked 2026-12-03 (peft 0.21.2): max |logits - reference| = 1.5e-05.
"""
import argparse
import json
import os
import shutil
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import T5ForConditionalGeneration

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")
BASE = os.path.join(FIXTURES, "t5", "v1_1")
OUT = os.path.join(FIXTURES, "peft")
ALL = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]

ADAPTERS = [
    ("alpha", dict(r=4, lora_alpha=16, target_modules=ALL), True),
    ("rslora", dict(r=8, lora_alpha=8, use_rslora=True, target_modules=ALL), True),
    ("attention", dict(r=4, lora_alpha=8, target_modules=r".*Attention\.(q|v)"), True),
    ("bin", dict(r=2, lora_alpha=4, target_modules=["q", "wi_0", "wo"]), False),
]


def base():
    return T5ForConditionalGeneration.from_pretrained(BASE).eval()


def inputs():
    inp = load_file(os.path.join(BASE, "inputs.safetensors"))
    return {k: inp[k] for k in ["input_ids", "attention_mask", "decoder_input_ids"]}


def logits(m):
    with torch.no_grad():
        return m(**inputs()).logits


def make():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    ref = {}
    g = torch.Generator().manual_seed(7)
    plain = logits(base())
    for name, kw, safe in ADAPTERS:
        m = get_peft_model(base(), LoraConfig(task_type="SEQ_2_SEQ_LM", lora_dropout=0.0, **kw))
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        m.eval()
        d = os.path.join(OUT, name)
        m.save_pretrained(d, safe_serialization=safe)
        for extra in ["README.md"]:
            p = os.path.join(d, extra)
            if os.path.exists(p):
                os.remove(p)
        # The base's name as recorded, not this machine's absolute path.
        cp = os.path.join(d, "adapter_config.json")
        cfg = json.load(open(cp))
        cfg["base_model_name_or_path"] = "tests/fixtures/t5/v1_1"
        json.dump(cfg, open(cp, "w"), indent=2, sort_keys=True)
        # What a user does: load the saved folder onto a fresh base.
        loaded = PeftModel.from_pretrained(base(), d).eval()
        out = logits(loaded)
        assert (out - logits(m)).abs().max() < 1e-6
        moved = (out - plain).abs().max().item()
        assert moved > 1e-2, f"{name}: the adapter barely changes the logits ({moved})"
        ref[f"{name}_logits"] = out.contiguous()
        print(name, "files", sorted(os.listdir(d)), "moved", round(moved, 3))
    save_file(ref, os.path.join(OUT, "reference.safetensors"))


def check_export(d):
    """A goosepipe export of the expert_a fixture, loaded by peft, against the torch-hook LoRA logits."""
    want = load_file(os.path.join(BASE, "reference.safetensors"))["lora_logits"]
    got = logits(PeftModel.from_pretrained(base(), d).eval())
    diff = (got - want).abs().max().item()
    print(f"peft loads {d}: max |logits - goosepipe's lora reference| = {diff:.2e}")
    return diff < 1e-4


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-export", metavar="DIR")
    a = ap.parse_args()
    if a.check_export:
        sys.exit(0 if check_export(a.check_export) else 1)
    make()
