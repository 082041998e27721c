"""Model metrics for training (challenger vs champion) and realised performance.

Written here rather than taken from scikit-learn: LightGBM imports scikit-learn whenever it
is installed (0.8 s and 70 MiB in every process that loads a model, scoring workers
included), and these five need NumPy only.

- binary: `log_loss` (natural log, predictions clipped to [1e-15, 1 - 1e-15]), `brier`
  (mean squared error of the probability), `auc` (area under the ROC curve: the
  probability that a random positive scores above a random negative, ties counting one
  half; undefined when the labels hold one class only);
- regression: `rmse`, `mae`.

A metric the labels leave undefined is None in `metrics`' answer, never NaN (which is not
JSON, and compares false with everything, a gate included); `undefined` says why.

`auc` is exact: the Mann-Whitney statistic from tied ranks is summed in integers and
divided once, so the value is the true AUC correctly rounded (scikit-learn's trapezoids
agree to ~1e-15).
"""

from __future__ import annotations

import math

import numpy as np


def metrics(task: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float | None]:
    """The task's metrics of predictions `pred` against labels `y` (same length, no NaN);
    None for a metric these labels leave undefined (`undefined`)."""
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if y.shape != pred.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and predictions {pred.shape} differ in shape")
    if len(y) == 0:
        raise ValueError("no rows to measure")
    if np.isnan(pred).any() or np.isnan(y).any():
        raise ValueError("labels or predictions hold NaN")
    if task == "binary":
        if not np.isin(y, (0.0, 1.0)).all():
            raise ValueError(f"binary labels must be 0 or 1; found {sorted(set(y.tolist()))[:5]}")
        area = auc(y, pred)
        return {
            "log_loss": log_loss(y, pred),
            "brier": brier(y, pred),
            "auc": None if math.isnan(area) else area,
        }
    mae = float(np.mean(np.abs(pred - y)))
    return {"rmse": math.sqrt(_mean_squared_error(y, pred)), "mae": mae}


def undefined(task: str, y: np.ndarray) -> dict[str, str]:
    """Why each metric that `metrics` leaves None on labels `y` is undefined."""
    classes = np.unique(np.asarray(y, dtype=np.float64))
    if task == "binary" and len(classes) == 1:
        return {"auc": f"the labels hold one class only ({classes[0]:g}); AUC needs both"}
    return {}


def log_loss(y: np.ndarray, pred: np.ndarray) -> float:
    clipped = np.clip(pred, 1e-15, 1 - 1e-15)
    # log1p(-p) is log(1 - p) without the rounding of 1 - p for small p
    return float(-np.mean(np.where(y == 1.0, np.log(clipped), np.log1p(-clipped))))


def brier(y: np.ndarray, pred: np.ndarray) -> float:
    return _mean_squared_error(y, pred)


def _mean_squared_error(y: np.ndarray, pred: np.ndarray) -> float:
    err = pred - y
    return float(np.mean(err * err))


def auc(y: np.ndarray, pred: np.ndarray) -> float:
    positive = y == 1.0
    n_pos = int(positive.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(pred, kind="stable")
    ranked = pred[order]
    # Tied scores share the mean of their 1-based ranks (first + last) / 2; kept doubled,
    # as integers, so the sum below is exact.
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], len(ranked)] - 1
    doubled = np.repeat(starts + ends + 2, ends - starts + 1)
    rank_sum_doubled = int(doubled[positive[order]].sum(dtype=np.int64))
    u_doubled = rank_sum_doubled - n_pos * (n_pos + 1)
    return u_doubled / (2 * n_pos * n_neg)
