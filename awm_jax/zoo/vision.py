"""Non-text inputs for the multimodal zoo models: images of rendered text lines, as patches.

A line of text is drawn in Pillow's default font on a ``12 x (8 P)`` grey-scale canvas and cut
into ``P`` patches of ``12 x 8`` pixels, each flattened to a 96-vector and scaled to
``[-0.5, 0.5]``. The multimodal derivation trains a model to read such images (predict the line
that was drawn), which exercises a projector from a non-text feature space into the embedding
space as LLaVA-style models do.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

__all__ = ["PATCH_HEIGHT", "PATCH_WIDTH", "FEATURE_SIZE", "render_patches"]

PATCH_HEIGHT = 12
PATCH_WIDTH = 8
#: Width of one feature vector (one flattened patch).
FEATURE_SIZE = PATCH_HEIGHT * PATCH_WIDTH


@lru_cache(maxsize=1)
def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def render_patches(lines: Sequence[str], num_patches: int) -> np.ndarray:
    """Renders text lines and cuts them into patches.

    Args:
        lines: ``B`` strings; text beyond the canvas width is cut off.
        num_patches: patches per line ``P`` (canvas width ``8 P`` pixels).

    Returns:
        ``[B, P, 96]`` float32 in ``[-0.5, 0.5]``; patch ``p`` holds columns ``8p .. 8p + 7``,
        row-major.
    """
    from PIL import Image, ImageDraw

    width = num_patches * PATCH_WIDTH
    out = np.empty((len(lines), num_patches, FEATURE_SIZE), np.float32)
    for i, line in enumerate(lines):
        img = Image.new("L", (width, PATCH_HEIGHT), 0)
        ImageDraw.Draw(img).text((0, 0), line, fill=255, font=_font())
        px = np.asarray(img, np.float32) / 255.0 - 0.5  # [12, W]
        patches = px.reshape(PATCH_HEIGHT, num_patches, PATCH_WIDTH).transpose(1, 0, 2)
        out[i] = patches.reshape(num_patches, FEATURE_SIZE)
    return out
