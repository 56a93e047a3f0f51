#!/usr/bin/env python3
"""Opens a dataset directory with pyarrow + numpy only, as a Python user would.

Prints one JSON line: rows per split, the schema as pyarrow sees it, and the first
training row's key, label and pixel sum, for tests/interop.rs to compare with Rust.
"""
import json
import pathlib
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

root = pathlib.Path(sys.argv[1])
manifest = json.loads((root / "dataset.json").read_text())
size = manifest["image_size"]
train = pq.read_table(sorted((root / "train").glob("part-*.parquet")))
val = pq.read_table(sorted((root / "val").glob("part-*.parquet")))
expected = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("label", pa.int64(), nullable=True),
    pa.field("pixels", pa.binary(size * size * 3), nullable=False),
])
assert train.schema.remove_metadata().equals(expected), train.schema
first = np.frombuffer(train.column("pixels")[0].as_py(), dtype=np.uint8).reshape(size, size, 3)
mean = np.load(root / "mean.npy")
assert mean.shape == (size, size, 3) and mean.dtype == np.float32, (mean.shape, mean.dtype)
print(json.dumps({
    "train_rows": train.num_rows,
    "val_rows": val.num_rows,
    "schema": str(train.schema.remove_metadata()),
    "first_key": train.column("key")[0].as_py(),
    "first_label": train.column("label")[0].as_py(),
    "first_pixel_sum": int(first.astype(np.int64).sum()),
    "mean_of_mean": float(mean.mean()),
}))
