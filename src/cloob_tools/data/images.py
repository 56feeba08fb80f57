"""Pictures of any size and mode made into the square RGB arrays the writers store."""
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

IMAGE_SIZE = 64  # the builders' stored size; the model's transform resizes to its own input size
WHITE = (255, 255, 255, 255)


def fit_square(image: Image.Image, size: int) -> np.ndarray:
    """``[size, size, 3]`` uint8: ``image`` shrunk to fit (never enlarged, so small drawings keep their
    size), centred on white, transparency composited."""
    image = image.convert("RGBA")
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    canvas = Image.new("RGBA", (size, size), WHITE)
    canvas.alpha_composite(image, ((size - image.width) // 2, (size - image.height) // 2))
    return np.asarray(canvas.convert("RGB"))


def fit_files(paths: Sequence[Path], size: int) -> np.ndarray:
    """``[n, size, size, 3]`` uint8: each picture file made square by :func:`fit_square`."""
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            images[index] = fit_square(image, size)
    return images
