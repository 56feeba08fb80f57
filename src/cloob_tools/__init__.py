"""The project's tooling: the demo, the studies, data preparation, benchmarks and reports around the
library (:mod:`open_clip_cloob`) and its training (:mod:`training`). The library never imports it;
``pip install 'open_clip_cloob[demo]'`` installs what it needs.

Command lines (``python -m cloob_tools.<tool> --help``):

- ``demo`` (``make demo``): CLOOB and CLIP trained side by side, exported, evaluated, reported;
- ``study`` (``make study``): grids of runs with zero-shot during training (package :mod:`.study`);
- ``collapse_study``: the collapse recipe over seeds and one-change variants;
- ``bench_loss``, ``bench_train`` (``make bench``), ``perf_report``: benchmarks and their tables;
- ``zeroshot_paper_table``: zero-shot results next to the paper's numbers (``scripts/zeroshot_paper.sh``);
- ``data.make_corpus`` (the demo's data), ``data.make_demo_data``, ``data.make_stamps_digits_data``,
  ``data.make_fashion_mnist_data``, ``data.cc3m_tsv_to_csv``: data sets (package :mod:`.data`).

The stages they share:

- :mod:`.data`: real images offline (Fashion-MNIST, Noto emoji, Unicode symbols, Tux Paint stamps,
  country flags, scikit-learn's digits), their writers (OpenCLIP CSV, webdataset, CLIP_benchmark
  sets), the data manifest;
- :mod:`.runs`: a ``training.main`` run's flags (the demo's recipe) and environment, launching it;
- :mod:`.results`: the one reader of a run's tensorboard scalars and ``results.jsonl``;
- :mod:`.zeroshot`: CLIP_benchmark on held-out sets, in a subprocess;
- :mod:`.plots`, :mod:`.reports`: matplotlib panels; Markdown tables and the README's generated blocks;
- :mod:`.console`: how a command line logs and ends;
- ``model_configs/``: the models the tools train (``demo-vit``, ``demo-vit-e256``, the collapse
  recipe's ``vit32-collapse-cloob``, the tiny ``tiny-test-vit-cloob`` of the CPU benchmarks and tests).
"""
