"""Shared helpers for the ShapesWorld tests: image degradations standing in for a generator's imperfections."""

import numpy as np
import pytest


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an ``(H, W, 3)`` image (edge padding), float32 output."""
    x = img.astype(np.float32)
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(x, ((r, r), (0, 0), (0, 0)), mode="edge")
    x = sum(k[i] * p[i:i + x.shape[0]] for i in range(2 * r + 1))
    p = np.pad(x, ((0, 0), (r, r), (0, 0)), mode="edge")
    return sum(k[i] * p[:, i:i + x.shape[1]] for i in range(2 * r + 1))


def degrade(img: np.ndarray, rng: np.random.Generator, sigma: float = 1.0, noise: float = 0.05) -> np.ndarray:
    """Mild blur (``sigma`` pixels) plus Gaussian noise (std ``noise`` of the full range), as uint8."""
    x = gaussian_blur(img, sigma) if sigma > 0 else img.astype(np.float32)
    x = x + rng.normal(0.0, noise * 255.0, x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@pytest.fixture
def blur():
    return gaussian_blur


@pytest.fixture
def degrade_fn():
    return degrade
