"""Write Fashion-MNIST (from its IDX files) as a PNG image folder.

    python benchmarks/make_imagefolder.py OUT [--idx /usr/share/datasets/fashion-mnist] [--limit N]

gives ``OUT/train/<class>/<n>.png`` (60000) and ``OUT/test/<class>/<n>.png`` (10000), grey
28x28, lossless: ``kdistill train examples/imagefolder_kd.yaml --set data.root=OUT`` then
trains on exactly the pixels of the in-memory ``fashion-mnist`` source. ``--limit`` keeps
the first N images of each split (quick checks, benchmarks).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from kdistill.data.datasets import FASHION_MNIST_ROOT, _find
from kdistill.data.idx import read_idx

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def write(idx_root: Path, out: Path, limit: int | None = None) -> dict[str, int]:
    counts = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        x = read_idx(_find(idx_root, f"{stem}-images-idx3-ubyte"))
        y = read_idx(_find(idx_root, f"{stem}-labels-idx1-ubyte"))
        n = len(x) if limit is None else min(limit, len(x))
        for c in CLASSES:
            (out / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(x[i]).save(out / split / CLASSES[int(y[i])] / f"{i:05d}.png", compress_level=1)
        counts[split] = n
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--idx", default=FASHION_MNIST_ROOT, help="folder of the four IDX files")
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args()
    print(write(Path(a.idx), Path(a.out), a.limit))


if __name__ == "__main__":
    main()
