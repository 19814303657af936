"""Pixels to thumbnails: one instance's image windowed into a PNG, a server-rendered image brought
to the same size, and a study's montage of its series' thumbnails. Pure functions (run them in a
worker thread); Pillow does the scaling and the PNG encoding.

A thumbnail's longer side is exactly ``size`` pixels, its aspect kept; a montage is a ``size`` ×
``size`` square of its thumbnails on black.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

_PERCENTILES = (1.0, 99.0)
"""The window of an image that names none: robust to a few hot or dead pixels."""


def thumbnail_of_dataset(dataset: Dataset, size: int) -> bytes:
    """The representative frame of ``dataset`` (its middle one), windowed by its own
    WindowCenter/WindowWidth (or a percentile window), as a PNG thumbnail."""
    pixels = dataset.pixel_array
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[frames // 2]
    if int(getattr(dataset, "SamplesPerPixel", 1) or 1) == 1:
        image = Image.fromarray(_windowed(apply_modality_lut(pixels, dataset), dataset), mode="L")
    else:
        image = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB")
    return _png(_scaled(image, size))


def thumbnail_of_image(data: bytes, size: int) -> bytes:
    """A server-rendered image (PNG or JPEG) as a PNG thumbnail of the same size rule."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return _png(_scaled(image.convert("L" if image.mode in ("L", "I", "I;16", "F") else "RGB"), size))


def montage(thumbnails: list[bytes], size: int) -> bytes:
    """The thumbnails in a square grid filling a ``size`` × ``size`` PNG."""
    canvas = Image.new("RGB", (size, size))
    columns = max(1, math.ceil(math.sqrt(len(thumbnails))))
    cell = size // columns
    for index, data in enumerate(thumbnails):
        with Image.open(io.BytesIO(data)) as image:
            image = _scaled(image.convert("RGB"), max(1, cell))
            row, column = divmod(index, columns)
            x = column * cell + (cell - image.width) // 2
            y = row * cell + (cell - image.height) // 2
            canvas.paste(image, (x, y))
    return _png(canvas)


def _windowed(values: Any, dataset: Dataset) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    window = _window_of(dataset)
    if window is None:
        low, high = np.percentile(values, _PERCENTILES)
    else:
        center, width = window  # PS3.3 C.11.2.1.2.1, linear function
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    if high <= low:
        high = low + 1
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0
    if str(getattr(dataset, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        scaled = 255.0 - scaled
    return scaled.astype(np.uint8)


def _window_of(dataset: Dataset) -> tuple[float, float] | None:
    """The first WindowCenter/WindowWidth pair of the file, if it has a usable one."""
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        center_value = float(center[0] if _multiple(center) else center)
        width_value = float(width[0] if _multiple(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (center_value, width_value) if width_value >= 1 else None


def _multiple(value: Any) -> bool:
    return isinstance(value, (list, tuple, MultiValue))


def _scaled(image: Image.Image, size: int) -> Image.Image:
    longer = max(image.width, image.height)
    width = max(1, round(image.width * size / longer))
    height = max(1, round(image.height * size / longer))
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
