"""Writes the scikit-learn digits data set (1,797 real 8x8 handwritten digits, shipped inside the
package, so nothing is downloaded) as grayscale PNG files for tests and experiments.

    python scripts/write_digits.py OUT_DIR [--size 32] [--limit N] [--by-class]

Writes OUT_DIR/<index>.png for every sample (index = row in sklearn's load_digits, upscaled from
8x8 to --size pixels with nearest-neighbour so the strokes stay sharp) and OUT_DIR/labels.csv
with columns index,file,label (label = the digit, 0-9). With --by-class, each image goes to
OUT_DIR/<label>/<index>.png instead (`file` in labels.csv says where), the layout of
`alps-client add-folder`.
"""

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits(
    out_dir: Path, size: int = 32, limit: int | None = None, by_class: bool = False
) -> list[tuple[int, str, int]]:
    """Writes the PNG files and labels.csv; returns the (index, file path relative to out_dir,
    label) rows."""
    digits = load_digits()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    count = len(digits.target) if limit is None else min(limit, len(digits.target))
    for index in range(count):
        # Pixel values are 0..16 (sklearn docs); scale to 0..255.
        pixels = (digits.images[index] * (255.0 / 16.0)).round().astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.NEAREST)
        label = int(digits.target[index])
        name = f"{label}/{index:04d}.png" if by_class else f"{index:04d}.png"
        (out_dir / name).parent.mkdir(exist_ok=True)
        image.save(out_dir / name)
        rows.append((index, name, label))
    with open(out_dir / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "file", "label"])
        writer.writerows(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", type=int, default=32, help="output width and height in pixels (default 32)")
    parser.add_argument("--limit", type=int, default=None, help="write only the first N samples")
    parser.add_argument("--by-class", action="store_true", help="write OUT_DIR/<label>/<index>.png")
    args = parser.parse_args()
    rows = write_digits(args.out_dir, args.size, args.limit, args.by_class)
    print(f"write_digits: {len(rows)} images in {args.out_dir}")


if __name__ == "__main__":
    main()
