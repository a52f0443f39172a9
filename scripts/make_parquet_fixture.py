#!/usr/bin/env python3
"""Writes the small parquet files the dataset tests read, with pyarrow (the writer the
hub and `datasets` use), snappy-compressed like the hub's parquet conversion:

    pip install pyarrow
    python3 scripts/make_parquet_fixture.py

tests/fixtures/data/rte-validation.parquet   super_glue/rte-shaped rows (one unlabeled)
tests/fixtures/data/bigbench-mixed.parquet   tasksource/bigbench-shaped rows (list columns)
"""
import os

import pyarrow as pa
import pyarrow.parquet as pq

out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "data")
os.makedirs(out, exist_ok=True)

rte = pa.table({
    "premise": ["Dana Reeve, the widow of the actor, died at 44.", "Yet, we now are discovering that antibiotics are losing their effectiveness.", "Cairo is now home to some 15 million people.", "An unlabeled test row."],
    "hypothesis": ["Christopher Reeve had an accident.", "Bacteria is winning the war.", "15 million people live in Cairo.", "Nothing."],
    "idx": pa.array([0, 1, 2, 3], pa.int32()),
    "label": pa.array([1, 0, 0, -1], pa.int64()),
})
pq.write_table(rte, os.path.join(out, "rte-validation.parquet"), compression="snappy")

bb = pa.table({
    "idx": pa.array([0, 1, 2], pa.int32()),
    "inputs": ["Q: Is the sky blue?\nA:", "Q: How many legs has a spider?\nA:", "Q: Pick the colours.\nA:"],
    "targets": [["Yes"], ["eight", "8"], ["red", "blue"]],
    "multiple_choice_targets": [["Yes", "No"], [], ["red", "dog", "blue"]],
    "multiple_choice_scores": [[1, 0], [], [1, 0, 1]],
})
pq.write_table(bb, os.path.join(out, "bigbench-mixed.parquet"), compression="snappy")
