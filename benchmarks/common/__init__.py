"""What the benchmark scripts share, in a layout a reader can follow.

- :mod:`common.report`: per-example metrics, their mean ± standard error, winners (only when
  ahead by two standard errors of the paired difference), tables and JSON; seeding and timing.
- :mod:`common.metrics`: blur, pixel orders, deletion and insertion curves and their AUC, rank
  correlation.
- :mod:`common.pic`: PAIR's PIC metrics (SIC, AIC), adapted to 8 x 8 images, with diagnostics of
  their information axis; a cap on torch's and the native thread pools.
- :mod:`common.planted`: the models and data of the small benchmarks: the planted-feature images
  and their CNN; training, freezing, predictions and accuracy of a small classifier.
- :mod:`common.photos`: EfficientNet-Lite0 and the photo crops, predicted classes and other-class
  references (the real-model benchmarks and tutorial 5).

The scripts in ``benchmarks/`` are the runs: each builds its models and data (or takes them
from :mod:`common.planted` and :mod:`common.photos`), calls the methods, scores them with
:mod:`common.metrics` and :mod:`common.pic` and prints with :mod:`common.report`. Run a script from
the repository root, e.g. ``python benchmarks/quality_photos.py``; Python puts ``benchmarks/``
on the path, so ``import common`` works there.
"""
