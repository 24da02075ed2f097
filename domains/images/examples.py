"""Adversarial images as a person looks at them: a PNG grid of clean / adversarial / amplified perturbation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["amplified", "save_grid"]

_FONT = 16  # caption text, in pixels: the report shows the grid at its size or a little smaller
_TEXT = 20  # height of one caption line, in pixels
_MARGIN = 118  # width of the row titles
_TILE = 96  # least side of an image, in pixels (small images are scaled up by a whole factor)
_PER_BAND = 8  # columns per band: more images wrap to another band, so the grid fits the report's width
_GAP = 10  # between two bands
_ROWS = ("clean", "adversarial", "perturbation")
_RED, _GREEN, _BLACK = (190, 0, 0), (0, 120, 0), (0, 0, 0)


def amplified(x: torch.Tensor, x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The perturbation of each image scaled to fill [0, 1] around grey 0.5, and the factor used (0: none).

    Example:
        >>> x = torch.zeros(1, 1, 1, 2)
        >>> img, factor = amplified(x, x + torch.tensor([0.1, -0.05]).reshape(1, 1, 1, 2))
        >>> img.flatten().tolist(), [round(f, 3) for f in factor.tolist()]
        ([1.0, 0.25], [5.0])
    """
    delta = x_adv - x
    peak = delta.flatten(1).abs().amax(dim=1)
    factor = torch.where(peak > 0, 0.5 / peak.clamp_min(1e-12), torch.zeros_like(peak))
    return (0.5 + delta * factor.reshape(-1, 1, 1, 1)).clamp(0, 1), factor


def _cells(x: torch.Tensor, scale: int) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H*scale, W*scale, 3) uint8 RGB."""
    rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
    up = rgb.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return (up.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _name(names: Sequence[str] | None, k: int, room: int) -> str:
    text = names[k] if names is not None and k < len(names) else str(k)
    return text if len(text) <= room else text[: room - 1] + "."


def save_grid(
    path: Path,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    clean_pred: torch.Tensor | None = None,
    adv_pred: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
) -> None:
    """Write a PNG: one column per image (up to 8 per band, bands stacked); rows clean, adversarial and
    amplified perturbation.

    Each column is headed by its true label; the clean and adversarial images are captioned with the
    model's prediction (red when wrong) when predictions are given; the perturbation with its
    amplification factor. Captions are 16-pixel text (a scalable font where Pillow has FreeType).

    Example:
        >>> import tempfile
        >>> x = torch.rand(3, 1, 8, 8)
        >>> path = Path(tempfile.mkdtemp()) / "grid.png"
        >>> save_grid(path, x, (x + 0.05).clamp(0, 1), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))
        >>> Image.open(path).size
        (424, 386)
    """
    x, x_adv = x.detach().float().cpu(), x_adv.detach().float().cpu()
    n, _, h, w = x.shape
    scale = max(1, _TILE // max(h, w))
    cw, ch = w * scale + 6, h * scale
    row_h = ch + _TEXT + 2
    band_h = _TEXT + 2 + 3 * row_h + _GAP
    bands = max(1, -(-n // _PER_BAND))
    canvas = Image.new("RGB", (_MARGIN + min(n, _PER_BAND) * cw, bands * band_h), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=_FONT)
    pert, factor = amplified(x, x_adv)
    room = max(3, cw // 9)
    for band in range(bands):
        for r, title in enumerate(_ROWS):
            draw.text((2, band * band_h + _TEXT + 2 + r * row_h + ch // 2 - _FONT // 2), title, fill=_BLACK,
                      font=font)
    for row, images in enumerate((_cells(x, scale), _cells(x_adv, scale), _cells(pert, scale))):
        for i in range(n):
            band, column = divmod(i, _PER_BAND)
            top = band * band_h + _TEXT + 2 + row * row_h
            left = _MARGIN + column * cw
            canvas.paste(Image.fromarray(images[i]), (left, top))
            label = int(labels[i])
            if row == 0:
                draw.text((left, band * band_h), "y " + _name(class_names, label, room - 2), fill=_BLACK, font=font)
            preds = clean_pred if row == 0 else adv_pred if row == 1 else None
            if preds is not None:
                p = int(preds[i])
                draw.text((left, top + ch), _name(class_names, p, room), fill=_GREEN if p == label else _RED,
                          font=font)
            elif row == 2:
                text = f"x{float(factor[i]):.0f}" if float(factor[i]) else "none"
                draw.text((left, top + ch), text, fill=_BLACK, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
