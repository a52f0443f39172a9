#!/usr/bin/env python3
"""Writes tests/fuzz/corpus/: mutants of pipelines/quickstart.kdl (seeded, so the corpus
is reproducible) plus hand-made hostile inputs. tests/fuzz.rs checks and plans every
file: each must give a result or diagnostics, never a panic, a stack overflow or a hang.

    python3 scripts/make_fuzz_corpus.py        # rewrites the corpus
"""
import os
import random

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")
SEED_TEXT = open(os.path.join(ROOT, "pipelines", "quickstart.kdl"), encoding="utf-8").read()

# Fragments a mutation inserts: KDL syntax, values at the edges of every type, names
# that could become paths, and constructs the parser treats specially.
DICTIONARY = [
    "{", "}", "{{{{", "}}}}", '"', "'", "=", ";", "\\", "\n", "/-", "/*", "*/", "//", "#",
    "#true", "#false", "#null", "#inf", "#-inf", "#nan", "(i8)", "(", ")", "r#\"", "\"\"\"",
    "0", "-1", "1e999", "9223372036854775808", "-9223372036854775809", "0x", "1_000",
    "18446744073709551616", "0.0", "1e-400", "NaN", "é", "\u200b", "\u00a0", "\t",
    'expert="../../x"', 'path="/dev/zero"', 'include "nope.kdl"', 'include "quickstart.kdl"',
    'eval "../escape" pool="held-in" { methods "base"; task "t" dataset="sort"; }',
    'synthetic task="nope"', 'steps=0', 'batch=-3', 'lr=1e308', 'top-k=0',
    'd-model=16384 d-ff=65536 layers=128', 'methods', 'task', 'defaults { }', 'pool "p" { experts; }',
    'expert "x" model="tiny-t5" dataset="x"', 'dataset "sort" { synthetic task="sort"; }',
]


def mutate(rng, text):
    b = list(text)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:  # delete a span
            j = min(len(b), i + rng.randint(1, 40))
            del b[i:j]
        elif op == 1 and b:  # duplicate a span
            j = min(len(b), i + rng.randint(1, 200))
            b[i:i] = b[i:j]
        elif op == 2:  # insert a dictionary fragment
            b[i:i] = list(rng.choice(DICTIONARY))
        elif op == 3 and b:  # replace one character
            b[min(i, len(b) - 1)] = rng.choice(' {}"=;\\\n#-0x')
        elif op == 4:  # truncate
            b = b[:i]
        else:  # swap two lines
            lines = "".join(b).split("\n")
            x, y = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[x], lines[y] = lines[y], lines[x]
            b = list("\n".join(lines))
    return "".join(b)


def handmade():
    yield "empty", ""
    yield "whitespace", "  \n\t\n   "
    yield "comment-only", "// nothing here\n/* nor here */\n"
    yield "deep-nesting", "x {" * 1281 + "}" * 1281
    yield "deep-comments", "/*" * 3000 + "*/" * 3000
    yield "unclosed", "model \"m\" {" * 50
    yield "many-unknown-nodes", "".join(f"node{i} \"x\"\n" for i in range(2000))
    yield "long-line-props", "dataset \"d\" " + "".join(f"p{i}=1 " for i in range(800)) + "{ synthetic task=\"sort\"; }\n"
    yield "nul-bytes", "model \"m\x00\" hub=\"x\"\n"
    yield "bad-utf8-escape", "dataset \"d\" path=\"\\u{D800}\"\n"
    yield "huge-number", "model \"m\" { init corpus=\"c\" d-model=" + "9" * 400 + "; }\n"
    yield "self-include", "include \"self-include.kdl\"\n"


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    rng = random.Random(20261202)
    for n in range(120):
        with open(os.path.join(OUT, f"mutant-{n:03}.kdl"), "w", encoding="utf-8") as f:
            f.write(mutate(rng, SEED_TEXT))
    for name, text in handmade():
        with open(os.path.join(OUT, f"{name}.kdl"), "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
