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


def save_label_distribution(hist: np.ndarray, path: str, title: str = "") -> None:
  """Stacked bars of each client's label counts (``hist``: ``[K, num_classes]``) as PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  hist = np.asarray(hist)
  k, c = hist.shape
  fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * k + 2), 3.2), dpi=100)
  bottom = np.zeros(k)
  colors = plt.get_cmap("tab10" if c <= 10 else "tab20")
  for label in range(c):
    ax.bar(np.arange(k), hist[:, label], bottom=bottom, color=colors(label % 20),
           label=str(label), width=0.8)
    bottom += hist[:, label]
  ax.set_xlabel("client")
  ax.set_ylabel("samples")
  ax.set_xticks(np.arange(k))
  ax.set_title(title, fontsize=9)
  ax.legend(title="label", fontsize=7, title_fontsize=7, bbox_to_anchor=(1.01, 1),
            loc="upper left", frameon=False)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def save_curves(rows: list[dict], path: str) -> None:
  """Loss, MADA lambda, mask entropy and any evaluation metric against the round (PNG)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  keys = ["loss", "mada_lambda", "mask_entropy_bits", "dp_epsilon"]
  keys += sorted({k for r in rows for k in r if k.startswith(("domain_", "inception_"))})
  keys = [k for k in keys if any(k in r for r in rows)]
  if not keys:
    return
  cols = min(4, len(keys))
  nrows = -(-len(keys) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), dpi=100,
                           squeeze=False)
  for ax, k in zip(axes.flat, keys):
    pts = [(r["round"], r[k]) for r in rows if k in r]
    ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None)
    ax.set_title(k, fontsize=9)
    ax.set_xlabel("round", fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(keys):]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
