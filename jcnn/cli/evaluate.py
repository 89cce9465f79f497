"""`jcnn evaluate PATH`: a trained run's (`jcnn.load_trained`) accuracy on a dataset's test
split and its confusion matrix, printed; `--out FILE.png` also draws the matrix."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from jcnn.cli import output_file


def configure(parser: argparse.ArgumentParser) -> None:
    from jcnn.train.data import DATASETS
    parser.add_argument("path", type=Path,
                        help="a checkpoint .npz, or a `jcnn train --out` directory")
    parser.add_argument("--data", choices=DATASETS,
                        help="the dataset whose test split to use (default: the run's)")
    parser.add_argument("--data-dir", help="directory holding the dataset's files")
    parser.add_argument("--out", type=output_file, help="draw the confusion matrix in this PNG")


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) counts: row the true label, column the predicted one."""
    return np.bincount(labels * classes + predicted, minlength=classes * classes).reshape(
        classes, classes)


def run(args) -> int:
    from jcnn.train.data import load_dataset
    from jcnn.train.trained import load_trained
    trained = load_trained(args.path)
    data = load_dataset(args.data or trained.config["data"], args.data_dir)
    predicted = trained.predict(data.test_images)
    labels, classes = data.test_labels.astype(np.int64), trained.config["num_classes"]
    matrix = confusion_matrix(labels, predicted.astype(np.int64), classes)
    correct = int(np.trace(matrix))
    print(f"test accuracy {correct / len(labels):.2%} ({correct}/{len(labels)}) of "
          f"{trained.config['model']} on {data.name}")
    width = max(len(str(matrix.max())), len(str(classes - 1)))
    print("confusion matrix (rows: true label, columns: predicted)")
    print(" " * (width + 1) + " ".join(f"{j:>{width}}" for j in range(classes)))
    for i, row in enumerate(matrix):
        print(f"{i:>{width}} " + " ".join(f"{v:>{width}}" for v in row))
    if args.out is not None:
        from jcnn.train.plots import plot_confusion
        plot_confusion(matrix, args.out)
    return 0
