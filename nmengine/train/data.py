"""The digits dataset (scikit-learn's 8x8 handwritten digits) and a seeded mini-batch iterator.

:func:`load_digits_split` returns a fixed, stratified train/test split (1437 / 360 samples for the
default ``test_size=360``) with pixels scaled from 0..16 to [0, 1] floats shaped ``(N, 1, 8, 8)``
(NCHW) and integer labels.  The split depends only on ``seed``, so results are comparable across runs
and machines.  :func:`batches` yields mini-batches in an order fixed by its ``rng``; :func:`random_shift`
is an optional augmentation (translate each image by up to ``k`` pixels, zero fill).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

__all__ = ["Dataset", "load_digits_split", "batches", "random_shift"]


@dataclass
class Dataset:
    """A train/test split: ``x_*`` float ``(N, C, H, W)``, ``y_*`` int64 ``(N,)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int = 10
    name: str = "digits"

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, classes={self.num_classes})"
        )


def load_digits_split(test_size: int = 360, seed: int = 0, dtype: type = np.float32) -> Dataset:
    """scikit-learn's digits, stratified split with ``test_size`` test samples, scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float64) / 16.0).astype(dtype)[:, None, :, :]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    return Dataset(np.ascontiguousarray(x_tr), y_tr, np.ascontiguousarray(x_te), y_te, 10, "digits")


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    rng: np.random.Generator | int | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x_batch, y_batch)``; with ``shuffle`` the order comes from ``rng`` (a Generator or a seed)."""
    if len(x) != len(y):
        raise ValueError(f"batches: x has {len(x)} samples but y has {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(x)
    if shuffle:
        r = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        order = r.permutation(n)
    else:
        order = np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


def random_shift(x: np.ndarray, rng: np.random.Generator, max_shift: int = 1) -> np.ndarray:
    """Translate each image of ``x (N, C, H, W)`` by a random (dy, dx) in [-k, k]^2, filling with zeros."""
    if max_shift <= 0:
        return x
    k = int(max_shift)
    N, C, H, W = x.shape
    padded = np.zeros((N, C, H + 2 * k, W + 2 * k), dtype=x.dtype)
    padded[:, :, k : k + H, k : k + W] = x
    dy = rng.integers(0, 2 * k + 1, (N,))
    dx = rng.integers(0, 2 * k + 1, (N,))
    rows = dy[:, None] + np.arange(H)[None, :]  # (N, H)
    cols = dx[:, None] + np.arange(W)[None, :]  # (N, W)
    n_idx = np.arange(N)[:, None, None, None]
    c_idx = np.arange(C)[None, :, None, None]
    return padded[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]
