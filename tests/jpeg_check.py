"""Reads a jpeg shard the way a Python user would, for tests/jpeg_shards.rs.

    jpeg_check.py SHARD OUT [--datasets]

Checks the `image` column is Hugging Face's struct<bytes, path>, decodes every row's
bytes with Pillow and writes the RGB pixels, row after row, to OUT; with --datasets also
opens the shard with `datasets.load_dataset("parquet", ...)` and writes the pixels of the
PIL images it yields to OUT.datasets. Prints one JSON line about what it found.
"""
import io
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def main():
    shard, out = sys.argv[1], sys.argv[2]
    table = pq.read_table(shard)
    image_type = table.schema.field("image").type
    assert image_type == pa.struct([pa.field("bytes", pa.binary()),
                                    pa.field("path", pa.string())]), image_type
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    keys = table.column("key").to_pylist()
    images = table.column("image").to_pylist()
    sizes, modes, pixels = set(), set(), []
    for row in images:
        with Image.open(io.BytesIO(row["bytes"])) as image:
            sizes.add(image.size)
            modes.add(image.mode)
            pixels.append(np.asarray(image.convert("RGB"), dtype=np.uint8).tobytes())
    with open(out, "wb") as f:
        f.write(b"".join(pixels))
    report = {
        "rows": table.num_rows,
        "paths_are_keys": [r["path"] for r in images] == keys,
        "sizes": sorted(list(s) for s in sizes),
        "modes": sorted(modes),
        "features": features,
    }
    if "--datasets" in sys.argv:
        import datasets

        ds = datasets.load_dataset("parquet", data_files=shard, split="train")
        report["datasets_features"] = {
            "image": type(ds.features["image"]).__name__,
            "label": type(ds.features["label"]).__name__,
        }
        # The shard's label is nullable int64, the field ClassLabel implies, so datasets
        # takes the ClassLabel (and its names) from the metadata: no cast.
        label = ds.features["label"]
        report["datasets_features"]["label_names"] = getattr(label, "names", None)
        first = ds[0]
        report["datasets_first"] = {
            "image_type": type(first["image"]).__module__ + "." + type(first["image"]).__name__,
            "label_name": label.int2str(first["label"]) if hasattr(label, "int2str") else None,
            "key": first["key"],
        }
        with open(out + ".datasets", "wb") as f:
            for row in ds:
                f.write(np.asarray(row["image"].convert("RGB"), dtype=np.uint8).tobytes())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
