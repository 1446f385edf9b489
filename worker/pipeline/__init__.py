"""Dual-gate melanoma-screening pipeline: Scalpel (segmentation), Fusion (classification).

Plain functions and classes over numpy and torch; nothing here knows about HTTP, Celery or
the database. Importing this package is cheap on purpose: torch is only imported by the
modules that run models (``models``, ``registry``, ``segmentation``, ``tta``, ``pipeline``),
so ``worker.pipeline.synthetic`` and the other numpy-only modules work without it.
"""
