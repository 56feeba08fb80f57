"""Real image-text data that loads without network access, and the data sets the tools build from it.

Sources (Debian packages, ``make data``): Fashion-MNIST (:mod:`.fashion_mnist`), the Noto colour
emoji with their Unicode CLDR names (:mod:`.emoji`), Unicode characters drawn by Symbola with their
Unicode names (:mod:`.symbols`), Tux Paint's stamps with their captions and scikit-learn's digits
(:mod:`.stamps`), country flags with their ISO 3166 names (:mod:`.flags`). :mod:`.images` makes
pictures square; :mod:`.writers` writes them in the layouts OpenCLIP's training and CLIP_benchmark
read.

Builders (command lines, ``python -m cloob_tools.data.NAME --help``): ``make_corpus`` (the demo's
data: emoji, symbols, stamps and flags, every caption unique and written by people; ``--fashion-share``
mixes in Fashion-MNIST with template captions), ``make_demo_data`` (Fashion-MNIST and emoji: the
duplicate-caption stress case, the study's data), ``make_stamps_digits_data`` (the study's second
set), ``make_fashion_mnist_data`` (a CSV or shards of Fashion-MNIST), ``cc3m_tsv_to_csv`` (Conceptual
Captions' TSV as OpenCLIP's CSV). :mod:`.manifest` reads the data manifest the builders write.
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
