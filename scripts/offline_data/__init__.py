"""Real images that load without network access, as image-text data for the demo, the tests and the
README's smoke run: Fashion-MNIST (:mod:`.fashion_mnist`) and the Noto colour emoji with their
Unicode CLDR names (:mod:`.emoji`), from Debian packages (``make data``), written in the layouts
OpenCLIP's training and CLIP_benchmark read (:mod:`.writers`).

Tooling, not the library: ``pip install open_clip_cloob`` does not install it. The scripts next to
it (``scripts/make_fashion_mnist_data.py``, ``scripts/make_demo_data.py``) import it as
``offline_data``; the tests find it through pytest's ``pythonpath``.
"""
from .fashion_mnist import (CAPTION_TEMPLATES, DATASET_FORMATS, FASHION_MNIST_CLASSES, fashion_mnist_dir,
                            load_fashion_mnist, make_captions, write_fashion_mnist_dataset)
from .writers import write_clip_benchmark_set, write_csv_dataset, write_webdataset_shards

__all__ = [
    "CAPTION_TEMPLATES",
    "DATASET_FORMATS",
    "FASHION_MNIST_CLASSES",
    "fashion_mnist_dir",
    "load_fashion_mnist",
    "make_captions",
    "write_clip_benchmark_set",
    "write_csv_dataset",
    "write_fashion_mnist_dataset",
    "write_webdataset_shards",
]
