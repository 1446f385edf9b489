"""Dual-gate melanoma-screening pipeline: Scalpel (segmentation), Fusion (classification).

Plain functions and classes over numpy, OpenVINO and torch; nothing here knows about HTTP,
Celery or the database. Importing this package is cheap on purpose: torch (with timm and
segmentation-models-pytorch) is imported at module level only by ``networks``, and elsewhere
only where a torch module is built or run, so the pipeline on a cached OpenVINO IR never
imports it (issue 27), and ``worker.pipeline.synthetic`` and the other numpy-only modules work
without it.
"""
