#!/usr/bin/env python3
"""Renders promptsource 0.2.3 templates with promptsource's own Template.apply (Jinja2)
on hand-written rows, and writes the results as the parity fixture that
tests/promptsource_parity.rs compares goosepipe's minijinja rendering against.

    pip install jinja2 pyyaml
    scripts/fetch-test-data.sh            # unpacks promptsource-0.2.3
    python3 scripts/make_promptsource_fixture.py > tests/fixtures/promptsource/rendered.json

promptsource/templates.py imports pandas and pkg_resources at module level for
features we do not use; they are stubbed so the real Template class can be imported.
Templates that call the random `choice` filter are skipped (their output is random).
"""
import json
import re
import os
import sys
import types

root = os.environ.get("GOOSEPIPE_PROMPTSOURCE") or os.path.join(
    os.path.dirname(__file__), "..", ".cache", "test-data", "promptsource-0.2.3")
sys.modules["pandas"] = types.ModuleType("pandas")
pkg = types.ModuleType("pkg_resources")
pkg.resource_filename = lambda name, rel: os.path.join(root, "promptsource", rel)
sys.modules["pkg_resources"] = pkg
sys.path.insert(0, root)
from promptsource.templates import DatasetTemplates  # noqa: E402

ARTICLE = " ".join(["The quick brown fox jumps over the lazy dog."] * 60)

ROWS = {
    "super_glue/rte": [
        {"premise": "Dana Reeve, the widow of the actor, died at 44.", "hypothesis": "Christopher Reeve had an accident.", "label": 1, "idx": 0},
        {"premise": "Yet, we now are discovering that antibiotics ||| are losing their effectiveness.", "hypothesis": "Bacteria is winning the war.", "label": 0, "idx": 1},
    ],
    "super_glue/cb": [
        {"premise": "It was a complex language. Not written down but handed down.", "hypothesis": "the language was peeled down", "label": 0, "idx": 0},
    ],
    "super_glue/copa": [
        {"premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.", "choice2": "The grass was cut.", "question": "cause", "label": 0, "idx": 0},
        {"premise": "The woman tolerated her friend's difficult behavior.", "choice1": "The woman knew her friend was going through a hard time.", "choice2": "The woman felt that her friend took advantage of her kindness.", "question": "effect", "label": 1, "idx": 1},
    ],
    "super_glue/wic": [
        {"word": "place", "sentence1": "Do you want to come over to my place later?", "sentence2": "A political system with no place for the less prominent groups.", "start1": 31, "start2": 27, "end1": 36, "end2": 32, "idx": 0, "label": 0},
    ],
    "super_glue/wsc.fixed": [
        {"text": "Mark told Pete many lies about himself, which Pete included in his book. He should have been more skeptical.", "span1_index": 0, "span2_index": 13, "span1_text": "Mark", "span2_text": "He", "idx": 0, "label": 0},
    ],
    "winogrande/winogrande_xl": [
        {"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.", "option1": "Sarah", "option2": "Maria", "answer": "1"},
    ],
    "anli": [
        {"uid": "0fd0abfb", "premise": "The Parma trolleybus system forms part of the public transport network.", "hypothesis": "The trolleybus system has over 2 urban routes", "label": 0, "reason": ""},
    ],
    "story_cloze/2016": [
        {"story_id": "b929f263", "input_sentence_1": "Rick grew up in a troubled household.", "input_sentence_2": "He never found good support in family.", "input_sentence_3": "It led him to a life of crime.", "input_sentence_4": "One day, Rick got shot in a robbery.", "sentence_quiz1": "He is happy now.", "sentence_quiz2": "He turned his life around.", "answer_right_ending": 2},
    ],
    "ag_news": [
        {"text": "Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers are seeing green again.", "label": 2},
    ],
    "glue/mrpc": [
        {"sentence1": "Amrozi accused his brother of deliberately distorting his evidence.", "sentence2": "Referring to him as only \" the witness \" , Amrozi accused his brother.", "label": 1, "idx": 0},
    ],
    "cos_e/v1.11": [
        {"id": "6b819727", "question": "The sanctions against the school were a punishing blow, and they seemed to what the efforts the school had made to change?", "choices": ["ignore", "enforce", "authoritarian", "yell at", "avoid"], "answer": "ignore", "abstractive_explanation": "ignoring is the opposite of enforcing", "extractive_explanation": "what the efforts the school had made to change"},
    ],
    "quartz": [
        {"id": "q1", "question": "If Mona is comparing two rocks and one is closer to the surface, that rock will be", "choices": {"text": ["warmer", "cooler"], "label": ["A", "B"]}, "answerKey": "B", "para": "Rocks deeper underground are warmer.", "para_id": "p1", "para_anno": {"effect_prop": "", "cause_dir_str": "", "effect_dir_str": "", "cause_dir_sign": "", "effect_dir_sign": "", "cause_prop": ""}, "question_anno": {"more_effect_dir": "", "less_effect_dir": "", "less_cause_prop": "", "more_effect_prop": "", "less_effect_prop": "", "less_cause_dir": ""}},
    ],
    "cnn_dailymail/3.0.0": [
        {"article": ARTICLE, "highlights": "A fox jumps.\nThe dog is lazy.", "id": "c1"},
    ],
    "imdb": [
        {"text": "A wonderful little production. The filming technique is very unassuming.", "label": 1},
    ],
}


def main():
    out = []
    for name, rows in ROWS.items():
        ds, _, sub = name.partition("/")
        templates = DatasetTemplates(ds, sub or None)
        for tid in sorted(templates.templates):
            t = templates.templates[tid]
            if re.search(r"\|\s*choice\b", t.jinja + (t.answer_choices or "")):
                continue
            for i, row in enumerate(rows):
                parts = t.apply(dict(row))
                choices = t.get_answer_choices_list(dict(row))
                out.append({
                    "templates": name,
                    "template": t.get_name(),
                    "row": i,
                    "parts": parts,
                    "choices": choices,
                })
    json.dump({"rows": ROWS, "rendered": out}, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
