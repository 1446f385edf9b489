"""What the rules read of a result and of a model's provenance, as structural types.

The clinical rules sit below the schemas (``shared.schemas`` imports the vocabulary and the
disposition from here), so they name no schema type, not even for type checking: any object
with these attributes will do, and ``AnalysisResult`` and ``ModelInfo`` are such objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

# What should happen next (shared.clinical.disposition decides it; the API's result.disposition).
Disposition = Literal["urgent_referral", "clinician_review", "routine"]


class Provenance(Protocol):
    """The parts of a model's provenance the rules read (``ModelInfo``)."""

    @property
    def weights(self) -> str | None: ...

    @property
    def threshold(self) -> float | None: ...


class _Equity(Protocol):
    @property
    def bias_warning(self) -> bool: ...


class _Concepts(Protocol):
    @property
    def diameter_mm(self) -> float | None: ...


class Finding(Protocol):
    """The parts of a result the disposition and the PLAN read (``AnalysisResult``)."""

    @property
    def probability(self) -> float: ...

    @property
    def uncertainty(self) -> float: ...

    @property
    def risk_band(self) -> str: ...

    @property
    def disposition(self) -> Disposition | None: ...

    @property
    def disposition_reasons(self) -> Sequence[str]: ...

    @property
    def safety_netting(self) -> str | None: ...

    @property
    def equity(self) -> _Equity: ...

    @property
    def concepts(self) -> _Concepts: ...
