"""Small statistics every layer uses: percentiles of recorded or simulated samples."""

from __future__ import annotations

from typing import Sequence


def percentile(samples: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) of the samples, linear interpolation (numpy's default); None without samples."""
    if not samples:
        return None
    import numpy as np

    return float(np.percentile(np.asarray(samples, dtype=np.float64), q, method="linear"))
