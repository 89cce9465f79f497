"""`jcnn predict PATH IMAGES`: the labels a trained run (`jcnn.load_trained`) gives to images
read from a `.npy` array or an IDX file (raw or `.gz`), one per line on stdout, or as CSV
`index,label` in `--out FILE` (written atomically)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from jcnn.cli import output_file


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path,
                        help="a checkpoint .npz, or a `jcnn train --out` directory")
    parser.add_argument("images", type=Path,
                        help="a .npy array, or an IDX file of unsigned bytes (raw or .gz): "
                             "(N, H, W[, C]) or one (H, W[, C]) image; integers are raw pixels, "
                             "floats already scaled to [0, 1]")
    parser.add_argument("--out", type=output_file, help="write CSV index,label here")


def read_images(path: Path) -> np.ndarray:
    """The array in a .npy file (no pickles), or in an IDX file (raw or .gz)."""
    from jcnn.train.data import read_idx_images
    if path.suffix != ".npy":
        return read_idx_images(path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({' '.join(str(e).split())})") from e


def run(args) -> int:
    from jcnn.train.atomic import atomic_open
    from jcnn.train.trained import load_trained
    labels = load_trained(args.path).predict(read_images(args.images))
    if args.out is None:
        sys.stdout.writelines(f"{label}\n" for label in labels)
    else:
        with atomic_open(args.out) as f:
            f.write("index,label\n")
            f.writelines(f"{i},{label}\n" for i, label in enumerate(labels))
    return 0
