"""What ``/running`` and the ``modelStatus`` event say about a model's failures and restarts.

The keys are added only for a model that has failed or been restarted since it was
configured, so a healthy model's record keeps upstream's exact shape.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any


def restart_fields(process: Any) -> dict[str, Any]:
    """``restarts`` (begun by the restart policy), ``lastFailure`` ({reason, detail, at})
    and, while a restart is pending, ``restartIn`` (seconds)."""
    failure = getattr(process, "failure", None)
    restarts = getattr(process, "restarts", 0)
    if failure is None and not restarts:
        return {}
    out: dict[str, Any] = {"restarts": restarts}
    if failure is not None:
        out["lastFailure"] = {"reason": failure.reason, "detail": failure.detail,
                              "at": datetime.fromtimestamp(failure.at).astimezone()}
    restart_at = getattr(process, "restart_at", None)
    if restart_at is not None:
        out["restartIn"] = round(max(0.0, restart_at - time.time()), 3)
    return out
