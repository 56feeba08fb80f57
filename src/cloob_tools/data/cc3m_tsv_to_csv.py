"""Turn a Conceptual-Captions-style TSV (caption <TAB> url-or-path, no header) into OpenCLIP's CSV.

Rows whose second column is an http(s) URL point at an image downloaded earlier into --image-root,
named by --url-name (default ``{index}.jpg``: the row number, as simple CC downloaders save them).
Other rows hold a path, absolute or relative to --image-root. Rows whose image file is missing
(failed downloads) are skipped and counted. The output is OpenCLIP's default CSV layout:
tab-separated ``filepath`` and ``title`` columns with absolute paths, i.e. ready for
``--train-data out.csv`` with no --csv-* flags.

    python scripts/cc3m_tsv_to_csv.py Train_GCC-training.tsv --image-root /data/cc3m/train \\
        --out /data/cc3m/train.csv

For webdataset shards, download with img2dataset instead (see the README).
"""
import argparse
import csv
import logging
import posixpath
import sys
from pathlib import Path
from typing import List, Optional, Sequence
from urllib.parse import urlparse

from .. import console

_logger = logging.getLogger(__name__)

PROG = "python -m cloob_tools.data.cc3m_tsv_to_csv"



def image_path(location: str, index: int, image_root: Path, url_name: str) -> Path:
    """Local file of row ``index`` whose TSV location is ``location`` (a URL or a path)."""
    if location.startswith(("http://", "https://")):
        basename = posixpath.basename(urlparse(location).path)
        return image_root / url_name.format(index=index, basename=basename)
    return image_root / location  # an absolute location replaces image_root


def convert(tsv_path: Path, out_path: Path, image_root: Path, url_name: str = "{index}.jpg") -> int:
    """Write the OpenCLIP CSV for ``tsv_path``; returns the number of rows written."""
    image_root = image_root.resolve()
    written = missing = 0
    with open(tsv_path, newline="", encoding="utf-8") as src, \
            open(out_path, "w", newline="", encoding="utf-8") as dst:
        writer = csv.writer(dst, delimiter="\t")
        writer.writerow(["filepath", "title"])
        for index, row in enumerate(csv.reader(src, delimiter="\t", quoting=csv.QUOTE_NONE)):
            if len(row) < 2:
                raise ValueError(f"{tsv_path}:{index + 1}: expected caption<TAB>url-or-path, got {row!r}")
            caption, location = row[0].strip(), row[1].strip()
            path = image_path(location, index, image_root, url_name)
            if not path.is_file():
                missing += 1
                continue
            writer.writerow([str(path), caption])
            written += 1
    _logger.info("%s: wrote %d rows, skipped %d without an image file", out_path, written, missing)
    return written


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("tsv", type=Path, help="caption<TAB>url-or-path file, no header")
    parser.add_argument("--image-root", type=Path, required=True, help="folder holding the images")
    parser.add_argument("--out", type=Path, required=True, help="OpenCLIP CSV to write")
    parser.add_argument(
        "--url-name", default="{index}.jpg",
        help="file name of a URL row's image under --image-root; fields {index} (0-based row) and "
             "{basename} (last URL path component). Default: {index}.jpg")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    convert(args.tsv, args.out, args.image_root, args.url_name)
    return 0


if __name__ == "__main__":
    sys.exit(console.run(main, PROG))
