"""What the PyTorch benchmark scripts share."""
import platform


def cpu_model():
    """The CPU's model name, written beside every number (the machine kind changes)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def read_pairs(model_dir, lines):
    """Input/target token ids of examples.jsonl lines, as the gate scripts feed them:
    the input as the tokenizer encodes it (with EOS), the target without EOS (the
    model's loss appends it). Also returns the model's EOS id."""
    import json
    import os

    from tokenizers import Tokenizer
    from transformers import T5Config

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    eos = T5Config.from_pretrained(model_dir).eos_token_id

    def target(text):
        x = tok.encode(text).ids
        return x[:-1] if x and x[-1] == eos else x

    items = [{"input": tok.encode(e["input"]).ids, "target": target(e["target"])} for e in map(json.loads, lines)]
    return items, eos
