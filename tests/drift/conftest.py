"""Shared helpers for the drift tests: the exact-KS comparison and a summary of its worst gap.

The worst |D_sketch - D_exact| seen and the counting timing are printed in pytest's terminal
summary, so they are visible even with -q.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from drift import NumericReference
from drift.methods import KS

KS_TOLERANCE = 1e-3

_ks_gaps: list[tuple[float, str]] = []
_notes: list[str] = []


@pytest.fixture
def note() -> Callable[[str], None]:
    """Add a line to the terminal summary (e.g. a timing figure)."""
    return _notes.append


@pytest.fixture
def check_ks(request: pytest.FixtureRequest) -> Callable[..., tuple[float, float]]:
    """Fit on `reference`, count `current`, compare D with ks_2samp's exact D (NaN dropped)."""

    def check(
        reference: np.ndarray, current: np.ndarray, sketch_points: int = 2048
    ) -> tuple[float, float]:
        fitted = NumericReference.fit(reference, sketch_points=sketch_points)
        result = KS.compute("x", "numeric", fitted, fitted.count(current), 0.1)
        exact = stats.ks_2samp(
            reference[~np.isnan(reference)], current[~np.isnan(current)], method="asymp"
        )
        assert result.status == "ok"
        assert result.statistic is not None
        gap = abs(result.statistic - float(exact.statistic))
        _ks_gaps.append((gap, request.node.name))
        assert result.statistic == pytest.approx(float(exact.statistic), abs=KS_TOLERANCE)
        # The sketch never overestimates D (it looks at a subset of the exact sup's points).
        assert result.statistic <= float(exact.statistic) + 1e-12
        return result.statistic, float(exact.statistic)

    return check


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _ks_gaps:
        gap, name = max(_ks_gaps)
        terminalreporter.write_line(
            f"drift: worst KS |D_sketch - D_exact| = {gap:.3g} over {len(_ks_gaps)} "
            f"comparisons ({name})"
        )
    for note in _notes:
        terminalreporter.write_line(f"drift: {note}")
