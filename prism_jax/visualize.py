"""Sample grids as PNG."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image


def grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
  """Tiles ``[B, H, W, C]`` images in [-1, 1] into one uint8 ``[H', W', C]`` picture."""
  images = np.asarray(images, np.float32)
  b, h, w, c = images.shape
  nrow = nrow or math.ceil(math.sqrt(b))
  ncol = math.ceil(b / nrow)
  out = np.zeros((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), np.uint8)
  pix = np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
  for i in range(b):
    r, q = divmod(i, nrow)
    out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = pix[i]
  return out


def save_grid(images: np.ndarray, path: str, nrow: int | None = None, scale: int = 2) -> None:
  g = grid(images, nrow)
  img = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g)
  img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)
