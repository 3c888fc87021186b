"""What the benchmark scripts share, in a layout a reader can follow.

- :mod:`common.report`: per-example metrics, their mean ± standard error, winners (only when
  ahead by two standard errors of the paired difference), tables and JSON; seeding and timing.
- :mod:`common.metrics`: blur, pixel orders, deletion and insertion curves and their AUC, rank
  correlation.
- :mod:`common.photos`: EfficientNet-Lite0 and the photo crops, predicted classes and other-class
  references (the real-model benchmarks and tutorial 5).

The scripts in ``benchmarks/`` are the runs: each builds its models and data, calls the methods,
scores them with :mod:`common.metrics` and prints with :mod:`common.report`. Run a script from
the repository root, e.g. ``python benchmarks/quality_photos.py``; Python puts ``benchmarks/``
on the path, so ``import common`` works there.
"""
