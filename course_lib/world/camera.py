"""The camera: how a domain photographs a drawn scene (lighting, colour cast, blur, noise, compression).

The renderer draws each image as a clean scene of floats in [0, 1]; :func:`photograph` then applies
the domain's photographic nuisances, in the order a real camera would: light on the scene, the
lens (blur), the sensor (noise) and the file format (JPEG-like blocks). Everything stays float32
and works on a whole ``(N, 3, H, W)`` batch at once.
"""

from __future__ import annotations

import functools

import numpy as np

from course_lib.world.domains import Domain, lerp
from course_lib.world.keyed_random import Draws, keyed_uniform

_NOISE_BANK_SIDE = 512


def ramp(u: np.ndarray, size: int) -> np.ndarray:
    """A linear ramp from 0 to 1 across each image at angle ``2 pi u``, ``(N, H, W)`` float32.

    The camera darkens one side of an image with it; the renderer also uses it for gradient backgrounds.
    """
    grid = np.arange(size, dtype=np.float32) / (size - 1)
    angle = np.asarray(2 * np.pi * u, dtype=np.float32)[:, None, None]
    return np.clip(0.5 + (grid[None, None, :] - 0.5) * np.cos(angle) + (grid[None, :, None] - 0.5) * np.sin(angle), 0, 1)


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed ``(3, 512, 512)`` block of standard normal noise (Box-Muller on keyed numbers).

    Drawing fresh noise for every pixel would cost more than the rest of the rendering; a random
    crop of this bank per image looks the same and stays deterministic.
    """
    u = keyed_uniform(0, np.arange(3 * _NOISE_BANK_SIDE * _NOISE_BANK_SIDE // 2), 0xBA4C, 2)
    radius = np.sqrt(-2 * np.log1p(-u[:, 0]))
    normal = np.concatenate([radius * np.cos(2 * np.pi * u[:, 1]), radius * np.sin(2 * np.pi * u[:, 1])])
    return normal.astype(np.float32).reshape(3, _NOISE_BANK_SIDE, _NOISE_BANK_SIDE)


def _blur(images: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian blur with a per-image ``sigma`` (pixels), as two matrix products per image.

    Row ``i`` of the matrix holds the Gaussian weights centred on pixel ``i``, renormalised so that
    edges do not darken. A matrix product is far faster than shifting the image once per tap.
    """
    size = images.shape[-1]
    offsets = np.arange(size, dtype=np.float32)
    offsets = offsets[None, :, None] - offsets[None, None, :]
    weights = np.exp(-0.5 * (offsets / np.maximum(sigma, 1e-3).astype(np.float32)[:, None, None]) ** 2)
    weights[weights < 1e-6] = 0  # tiny "denormal" floats would make the products 30x slower
    weights /= weights.sum(axis=2, keepdims=True)
    weights = weights[:, None]  # (N, 1, size, size), the same for all three channels
    return weights @ images @ weights.transpose(0, 1, 3, 2)


@functools.lru_cache(maxsize=8)
def _block_average_matrix(size: int) -> np.ndarray:
    block = max(2, round(size / 16))
    groups = np.minimum(np.arange(size) // block, size // block - 1)  # a short last block joins the one before
    same = (groups[:, None] == groups[None, :]).astype(np.float32)
    return same / same.sum(axis=1, keepdims=True)


def _blocky(images: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """Blend towards block averages: the 8x8-block look of a heavily compressed JPEG (4 px at 64)."""
    average = _block_average_matrix(images.shape[-1])
    means = average @ images @ average.T
    s = strength[:, None, None, None].astype(np.float32)
    return images + (means - images) * s


def photograph(images: np.ndarray, domain: Domain, draws: Draws, scale: float) -> np.ndarray:
    """Photograph float32 scenes ``(N, 3, H, W)`` in ``domain``: lighting, colour cast, blur, noise, compression.

    ``draws`` gives the images' keyed numbers (purposes 4, 5 and 6); ``scale`` is the image side / 64.
    Used by :func:`~course_lib.world.render.render_batch`.
    """
    size = images.shape[-1]
    w = draws(4, 10)
    contrast, brightness = lerp(domain.contrast, w[:, 0]), lerp(domain.brightness, w[:, 1])
    if domain.contrast != (1.0, 1.0) or domain.brightness != (0.0, 0.0):  # decided per domain, never per batch
        images = (images - 0.5) * contrast[:, None, None, None].astype(np.float32) + 0.5
        images = images + brightness[:, None, None, None].astype(np.float32)
    if domain.illumination_gradient[1] > 0:
        side = ramp(w[:, 2], size)
        images = images * (1 - lerp(domain.illumination_gradient, w[:, 3]).astype(np.float32)[:, None, None] * side)[:, None]
    if domain.tint != (1.0, 1.0, 1.0) or domain.tint_jitter[1] > 0:
        jitter = lerp(domain.tint_jitter, w[:, 4])[:, None] * (2 * w[:, 5:8] - 1)
        images = images * (np.asarray(domain.tint) + jitter).astype(np.float32)[:, :, None, None]
    if domain.blur_sigma[1] > 0:
        images = _blur(images, lerp(domain.blur_sigma, w[:, 8]) * scale)
    if domain.noise_std[1] > 0:
        bank, offsets = _noise_bank(), draws(5, 2) * (_NOISE_BANK_SIDE - size)
        noise = np.stack([bank[:, oy:oy + size, ox:ox + size] for oy, ox in offsets.astype(int)])
        images = images + noise * lerp(domain.noise_std, w[:, 9])[:, None, None, None].astype(np.float32)
    if domain.blockiness[1] > 0:
        images = _blocky(images, lerp(domain.blockiness, draws(6, 1)[:, 0]))
    assert images.dtype == np.float32, images.dtype  # float64 would creep in and halve the speed
    return images
