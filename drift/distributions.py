"""The null distributions of the drift p-values, without importing `scipy.stats`.

`scipy.stats` imports ~420 modules, 0.6 s of CPU, where `scipy.special` takes 0.16 s; and
the process that publishes a run's last partition is a scoring worker, whose fork server
imports what publishing needs before the first chunk can start (`batchscore.fork_ready`).
The p-values need little of it:

- KS: `ks_2samp(method="asymp")` takes `kstwo.sf(D, n)`, which is `kolmogn(n, D,
  cdf=False)` in scipy's `scipy/stats/_ksstats.py`: numpy and `scipy.special`, plus one
  import that only the density uses (a finite-difference helper), and that import is what
  loads the whole of `scipy.stats`. So that file, scipy's own code, is loaded here as a
  module of its own without it (`_scipy_ksstats`): the same function, bit for bit. Where it
  cannot be (a SciPy whose file is laid out otherwise), `scipy.stats` is imported after all.
- chi-square: `chi2_contingency`'s p-value is `scipy.special.chdtrc(dof, statistic)`.

`tests/drift/test_distributions.py` compares both with `scipy.stats`, bit for bit, over
every branch of `kolmogn`.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import types
from collections.abc import Callable
from pathlib import Path

# The line of scipy/stats/_ksstats.py (SciPy 1.5 to 1.17 at least) that imports the density's
# helper; the survival function never calls it.
_DENSITY_IMPORT = "from scipy.stats._finite_differences import _derivative\n"


def kstwo_sf(statistic: float, n: float) -> float:
    """`scipy.stats.kstwo.sf(statistic, n)`: the one-sample two-sided KS distribution's
    survival function at `statistic` for samples of size `n` (NaN where `n` is not a
    positive integer)."""
    if math.isnan(statistic) or math.isnan(n):
        return math.nan
    if n < 1 or n != round(n):
        return math.nan  # outside kstwo's support of shapes, as scipy answers
    return float(_kolmogn()(n, statistic))


def chi2_sf(statistic: float, dof: float) -> float:
    """`scipy.stats.chi2.sf(statistic, dof)`, as `chi2_contingency` computes its p-value."""
    from scipy import special

    return float(special.chdtrc(dof, statistic))


@functools.cache
def _kolmogn() -> Callable[[float, float], float]:
    """`kolmogn(n, x, cdf=False)` of the installed SciPy."""
    module = _scipy_ksstats()
    if module is not None:
        return lambda n, x: module.kolmogn(n, x, cdf=False)
    from scipy.stats import distributions

    return lambda n, x: distributions.kstwo.sf(x, n)


def _scipy_ksstats() -> types.ModuleType | None:
    """SciPy's `scipy/stats/_ksstats.py`, loaded without its density's import; None where
    it is not there or not as expected."""
    spec = importlib.util.find_spec("scipy")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "stats" / "_ksstats.py"
    try:
        source = path.read_text(encoding="utf-8")
    except OSError:
        return None
    if source.count(_DENSITY_IMPORT) != 1 or "def kolmogn(" not in source:
        return None
    module = types.ModuleType("drift._scipy_ksstats", "scipy.stats._ksstats, without its pdf")
    module.__file__ = str(path)
    try:
        exec(compile(source.replace(_DENSITY_IMPORT, ""), str(path), "exec"), module.__dict__)
    except Exception:  # noqa: BLE001 - a SciPy this does not know: scipy.stats it is
        return None
    return module
