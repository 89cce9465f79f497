"""Write `jcnn/assets/digits.npz`, the dataset `jcnn train` uses by default. Run once, by hand:

    python scripts/make_digits.py

It needs scikit-learn, which jcnn itself does not: the file it writes is committed and shipped
in the package, so nothing is downloaded or computed at run time. Kept here so anyone can see
(and redo) exactly how the file was made.

Source: scikit-learn's `load_digits()`, the 1,797 8x8 images of the test part of the UCI
"Optical Recognition of Handwritten Digits" data set (E. Alpaydin and C. Kaynak, 1998,
https://doi.org/10.24432/C50P49), licensed CC BY 4.0. Pixels are counts 0..16.

Split: 360 test / 1,437 train, stratified by label, `random_state=0`, so every class has the
same share in both parts.
"""
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = Path(__file__).resolve().parents[1] / "jcnn" / "assets" / "digits.npz"


def main() -> None:
    digits = load_digits()
    images = digits.images.astype(np.uint8)  # (1797, 8, 8), values 0..16 stored as float64
    assert np.array_equal(images, digits.images) and images.max() == 16
    labels = digits.target.astype(np.uint8)
    train_images, test_images, train_labels, test_labels = train_test_split(
        images, labels, test_size=360, stratify=labels, random_state=0)
    np.savez_compressed(OUT, train_images=train_images, train_labels=train_labels,
                        test_images=test_images, test_labels=test_labels)
    print(f"wrote {OUT}: {len(train_labels)} train, {len(test_labels)} test, "
          f"{OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
