#!/usr/bin/env python3
"""Writes the small data files the dataset tests read, with pyarrow (the writer the
hub and `datasets` use): parquet snappy-compressed like the hub's parquet conversion,
and an Arrow IPC stream like `datasets`' save_to_disk:

    pip install pyarrow
    python3 scripts/make_data_fixtures.py

tests/fixtures/data/rte-validation.parquet   super_glue/rte-shaped rows (one unlabeled)
tests/fixtures/data/bigbench-mixed.parquet   tasksource/bigbench-shaped rows (list columns)
tests/fixtures/data/flan-data.arrow          FLAN-shaped rows (template types, an empty target)
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

n = 40
flan = pa.table({
    "inputs": [f"Translate number {i} to words." for i in range(n)],
    "targets": ["" if i == 5 else f"number {i}" for i in range(n)],
    "_template_type": [["zs_opt", "zs_noopt", "fs_opt", "fs_noopt"][i % 4] for i in range(n)],
    "_task_name": ["number_words"] * n,
    "_template_idx": pa.array([i % 7 for i in range(n)], pa.int64()),
})
with pa.OSFile(os.path.join(out, "flan-data.arrow"), "wb") as f:
    with pa.ipc.new_stream(f, flan.schema) as w:
        w.write_table(flan, max_chunksize=16)
