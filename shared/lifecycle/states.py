"""Status groups and the reasons a job can be canceled.
"""

from __future__ import annotations

from shared.tables import ACTIVE_STATUSES

ACTIVE = [s.value for s in ACTIVE_STATUSES]


# Why a canceled job was canceled (``cancel_reason``, and ``reason`` in analysis.canceled).
CANCEL_REQUESTED = "requested"


CANCEL_BATCH = "batch_canceled"


CANCEL_EXPIRED = "expired"
