"""Generate the deterministic customer-churn sample data set used by batchscore.

Run from the repository root:

    uv run python data/sample/generate.py

The script deletes and rewrites ``incoming/`` and ``labels/`` next to this file. It uses only
``numpy.random.default_rng`` with fixed seeds and no wall-clock input, so every rerun produces
byte-identical parquet files. See README.md in this folder for the layout, the columns, the
injected drift and the deliberately broken partition.
"""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
INCOMING = HERE / "incoming"
LABELS = HERE / "labels"

SEED = 20261001
START = date(2026, 10, 1)
N_DAYS = 14
LABELLED_DAYS = range(1, 11)  # 2026-10-01 .. 2026-10-10 have labels (the training window)
SPLIT_DAY = 5  # 2026-10-05 is written as two files
BROKEN_DAY = 11  # 2026-10-11 carries the invalid rows
ROW_GROUP_SIZE = 5_000
COMPRESSION = "zstd"
# Near-unique columns compress better without a per-row-group dictionary: customer_id (rows are
# written in id order) is DELTA_BINARY_PACKED, total_charges is PLAIN. Everything else uses the
# pyarrow defaults (dictionary + RLE).
COLUMN_ENCODING = {"customer_id": "DELTA_BINARY_PACKED", "total_charges": "PLAIN"}

PLANS = ["basic", "standard", "premium", "family"]
PLAN_P = [0.32, 0.34, 0.20, 0.14]
# Prices are whole quarters (x.00/.25/.50/.75): exact in binary, so the float columns compress.
PLAN_PRICE = {"basic": 18.50, "standard": 39.75, "premium": 74.50, "family": 59.25}
ADDON_PRICE = 4.75
DEVICE_PRICE = 2.50
CONTRACTS = ["month-to-month", "one-year", "two-year"]
CONTRACT_P = [0.52, 0.24, 0.24]
PAYMENT_METHODS = ["card", "bank_transfer", "paypal", "invoice"]
PAYMENT_P = [0.40, 0.25, 0.20, 0.15]
REGIONS = ["north", "south", "east", "west", "central"]
REGION_P = [0.20, 0.22, 0.20, 0.23, 0.15]

# Drift injected on the last three days, growing day by day (see README.md).
#   price: multiplier on monthly_charges (a price rise)
#   login: multiplier on days_since_last_login (engagement falls)
#   downgrade: share of non-basic customers moved to "basic"
#   student: share of all rows put on the new, never-trained "student" plan
DRIFT = {
    12: {"price": 1.10, "login": 1.30, "downgrade": 0.36, "student": 0.00},
    13: {"price": 1.15, "login": 1.45, "downgrade": 0.45, "student": 0.03},
    14: {"price": 1.20, "login": 1.60, "downgrade": 0.55, "student": 0.03},
}
DRIFTED_NUMERIC = ("monthly_charges", "days_since_last_login")

SCHEMA = pa.schema(
    [
        ("customer_id", pa.int64()),
        ("tenure_months", pa.int64()),
        ("monthly_charges", pa.float64()),
        ("total_charges", pa.float64()),
        ("num_support_calls", pa.int64()),
        ("avg_session_minutes", pa.float64()),
        ("days_since_last_login", pa.int64()),
        ("num_devices", pa.int64()),
        ("age", pa.int64()),
        ("payment_delay_days", pa.int64()),
        ("discount_pct", pa.float64()),
        ("data_usage_gb", pa.float64()),
        ("satisfaction_score", pa.float64()),
        ("plan", pa.string()),
        ("contract", pa.string()),
        ("payment_method", pa.string()),
        ("region", pa.string()),
    ]
)
LABEL_SCHEMA = pa.schema([("customer_id", pa.int64()), ("churned", pa.int8())])


def day_date(day: int) -> date:
    return START + timedelta(days=day - 1)


def partition_dir(root: Path, day: int) -> Path:
    return root / f"dt={day_date(day).isoformat()}"


def quarter(x: np.ndarray) -> np.ndarray:
    """Round to the nearest 0.25."""
    return np.round(np.asarray(x) * 4.0) / 4.0


def generate_day(day: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Return (columns, null masks, churned) for one undrifted, valid day."""
    rng = np.random.default_rng([SEED, day])
    n = int(rng.integers(19_000, 21_001))

    # Rows are written in customer_id order (day * 1_000_000 + 1 ..).
    customer_id = day * 1_000_000 + 1 + np.arange(n, dtype=np.int64)

    contract_idx = rng.choice(len(CONTRACTS), size=n, p=CONTRACT_P)
    plan_idx = rng.choice(len(PLANS), size=n, p=PLAN_P)
    payment_idx = rng.choice(len(PAYMENT_METHODS), size=n, p=PAYMENT_P)
    region_idx = rng.choice(len(REGIONS), size=n, p=REGION_P)
    m2m = contract_idx == 0
    two_year = contract_idx == 2

    # Tenure: longer contracts go with longer tenure; ~1% brand-new customers (tenure 0).
    shape = np.array([1.1, 2.0, 3.5])[contract_idx]
    scale = np.array([14.0, 14.0, 13.0])[contract_idx]
    tenure = np.clip(np.ceil(rng.gamma(shape, scale)), 1, 72).astype(np.int64)
    tenure[rng.random(n) < 0.01] = 0

    # Devices: family plans have more devices.
    device_p = np.where(plan_idx == 3, 0.55, 0.22)
    num_devices = (1 + rng.binomial(5, device_p)).astype(np.int64)

    # Monthly charges: list price of the plan + add-ons + per-device fee + usage overage.
    base_price = np.array([PLAN_PRICE[p] for p in PLANS])[plan_idx]
    addons = rng.binomial(5, np.array([0.15, 0.25, 0.35, 0.30])[plan_idx])
    overage = np.where(rng.random(n) < 0.15, np.ceil(rng.gamma(2.0, 2.5, n)), 0.0)
    monthly = base_price + ADDON_PRICE * addons + DEVICE_PRICE * (num_devices - 1) + overage
    monthly = np.round(np.clip(monthly, 18.50, 120.0), 2)

    # Total charges: accumulated bills, within a few percent of tenure * monthly (earlier prices,
    # credits, one-off fees), in whole quarters; null for brand-new customers (tenure 0).
    total = np.round(quarter(tenure * monthly * np.exp(rng.normal(0.0, 0.06, n))), 2)
    total_null = tenure == 0

    support_calls = rng.poisson(np.where(m2m, 1.5, 1.0) + 0.004 * (monthly - 50)).astype(np.int64)

    # Engagement: a latent "engaged" factor drives session length and login recency.
    engaged = rng.normal(0.0, 1.0, n)
    session = np.round(rng.gamma(4.0, 6.0 * np.exp(0.15 * engaged)), 1)
    session_null = rng.random(n) < 0.03
    login_mean = 9.0 * np.exp(-0.35 * engaged)
    days_login = rng.negative_binomial(2, 2.0 / (2.0 + login_mean))
    days_login = np.clip(days_login, 0, 60).astype(np.int64)

    age = np.clip(np.round(rng.normal(44, 14, n)), 18, 85).astype(np.int64)

    late = rng.random(n) < np.where(payment_idx == 3, 0.45, 0.18)
    delay = np.where(late, 1 + rng.geometric(0.15, n), 0)
    delay = np.clip(delay, 0, 90).astype(np.int64)

    has_discount = rng.random(n) < np.array([0.25, 0.45, 0.65])[contract_idx]
    # Promotional discounts come from a fixed list (retention offers are 12.5 and 17.5).
    promos = np.array([5.0, 10.0, 12.5, 15.0, 17.5, 20.0, 25.0, 30.0])
    promo_p = np.array([0.22, 0.24, 0.06, 0.16, 0.05, 0.14, 0.08, 0.05])
    discount = np.where(has_discount, rng.choice(promos, size=n, p=promo_p), 0.0)

    # Data usage is metered in 0.25 GB blocks.
    usage = np.round(quarter(np.exp(rng.normal(np.log(12) + 0.15 * (num_devices - 1), 0.7))), 2)

    sat_latent = 4.1 - 0.35 * support_calls + 0.25 * engaged + rng.normal(0, 0.8, n)
    satisfaction = np.clip(np.round(sat_latent), 1, 5).astype(np.float64)
    sat_null = rng.random(n) < 0.08

    # Churn: logistic model of the (true, unmasked) features.
    logit = (
        -1.60
        - 0.035 * tenure
        + 0.95 * m2m
        - 0.55 * two_year
        + 0.22 * support_calls
        + 0.013 * (monthly - 55)
        + 0.035 * (days_login - 9)
        - 0.40 * (satisfaction - 3.5)
        + 0.015 * delay
        - 0.015 * discount
        + 0.25 * (payment_idx == 3)
        + rng.normal(0.0, 0.6, n)
    )
    churned = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)

    cols = {
        "customer_id": customer_id,
        "tenure_months": tenure,
        "monthly_charges": monthly,
        "total_charges": total,
        "num_support_calls": support_calls,
        "avg_session_minutes": session,
        "days_since_last_login": days_login,
        "num_devices": num_devices,
        "age": age,
        "payment_delay_days": delay,
        "discount_pct": discount,
        "data_usage_gb": usage,
        "satisfaction_score": satisfaction,
        "plan": np.array(PLANS, dtype=object)[plan_idx],
        "contract": np.array(CONTRACTS, dtype=object)[contract_idx],
        "payment_method": np.array(PAYMENT_METHODS, dtype=object)[payment_idx],
        "region": np.array(REGIONS, dtype=object)[region_idx],
    }
    nulls = {name: np.zeros(n, dtype=bool) for name in SCHEMA.names}
    nulls["total_charges"] = total_null
    nulls["avg_session_minutes"] = session_null
    nulls["satisfaction_score"] = sat_null
    return cols, nulls, churned


def apply_drift(
    day: int,
    cols: dict[str, np.ndarray],
    bounds: dict[str, tuple[float, float]],
    train_mean: dict[str, float],
) -> None:
    """Inject the documented drift for ``day`` in place; numeric values stay inside ``bounds``."""
    spec = DRIFT[day]
    rng = np.random.default_rng([SEED, day, 1])
    n = len(cols["customer_id"])

    lo, hi = bounds["monthly_charges"]
    cols["monthly_charges"] = np.round(np.clip(cols["monthly_charges"] * spec["price"], lo, hi), 2)

    # Half of the rise is proportional, half is a flat delay of every login: the mean goes up by
    # ``spec["login"]``. Stochastic rounding keeps the counts on a smooth integer grid.
    lo, hi = bounds["days_since_last_login"]
    rise = spec["login"] - 1.0
    login = np.floor(
        cols["days_since_last_login"] * (1.0 + rise / 2)
        + train_mean["days_since_last_login"] * rise / 2
        + rng.random(n)
    )
    cols["days_since_last_login"] = np.clip(login, lo, hi).astype(np.int64)

    plan = cols["plan"].copy()
    downgrade = (plan != "basic") & (rng.random(n) < spec["downgrade"])
    plan[downgrade] = "basic"
    if spec["student"] > 0:
        plan[rng.random(n) < spec["student"]] = "student"
    cols["plan"] = plan


def break_day(day: int, cols: dict[str, np.ndarray], nulls: dict[str, np.ndarray]) -> dict:
    """Plant the documented invalid rows; return a description of them."""
    rng = np.random.default_rng([SEED, day, 2])
    r_null_id, r_dup_src, r_dup_copy, r_tenure, r_charges = rng.choice(
        len(cols["customer_id"]), size=5, replace=False
    )
    # A duplicate pair: the second row is a replay of the first (same id, same values).
    for name in SCHEMA.names:
        cols[name][r_dup_copy] = cols[name][r_dup_src]
        nulls[name][r_dup_copy] = nulls[name][r_dup_src]
    nulls["customer_id"][r_null_id] = True
    cols["tenure_months"][r_tenure] = 5000
    nulls["monthly_charges"][r_charges] = True
    return {
        "null_customer_id_row": int(r_null_id),
        "duplicate_customer_id": int(cols["customer_id"][r_dup_src]),
        "tenure_5000_customer_id": int(cols["customer_id"][r_tenure]),
        "null_monthly_charges_customer_id": int(cols["customer_id"][r_charges]),
    }


def to_table(cols: dict[str, np.ndarray], nulls: dict[str, np.ndarray]) -> pa.Table:
    arrays = []
    for field in SCHEMA:
        values = cols[field.name]
        mask = nulls[field.name]
        arrays.append(pa.array(values, type=field.type, mask=mask if mask.any() else None))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table,
        path,
        compression=COMPRESSION,
        row_group_size=ROW_GROUP_SIZE,
        use_dictionary=[name for name in table.column_names if name not in COLUMN_ENCODING],
        column_encoding={k: v for k, v in COLUMN_ENCODING.items() if k in table.column_names},
    )


def main() -> None:
    for folder in (INCOMING, LABELS):
        if folder.exists():
            shutil.rmtree(folder)

    # Statistics of the drifted numeric columns over the training days 1-10.
    train_values: dict[str, list[np.ndarray]] = {name: [] for name in DRIFTED_NUMERIC}
    bounds: dict[str, tuple[float, float]] = {}
    train_mean: dict[str, float] = {}
    broken: dict = {}
    for day in range(1, N_DAYS + 1):
        cols, nulls, churned = generate_day(day)

        if day in LABELLED_DAYS:
            for name in DRIFTED_NUMERIC:
                train_values[name].append(cols[name])
            labels = pa.Table.from_arrays(
                [pa.array(cols["customer_id"]), pa.array(churned)],
                schema=LABEL_SCHEMA,
            )
            write(labels, partition_dir(LABELS, day) / "part-0.parquet")
        elif not bounds:
            # Plausibility band for drifted values: [min - width, max + width] of days 1-10.
            for name in DRIFTED_NUMERIC:
                values = np.concatenate(train_values[name])
                lo, hi = float(values.min()), float(values.max())
                bounds[name] = (lo - (hi - lo), hi + (hi - lo))
                train_mean[name] = float(values.mean())

        if day in DRIFT:
            apply_drift(day, cols, bounds, train_mean)
        if day == BROKEN_DAY:
            broken = break_day(day, cols, nulls)

        table = to_table(cols, nulls)
        out = partition_dir(INCOMING, day)
        if day == SPLIT_DAY:
            half = table.num_rows // 2
            write(table.slice(0, half), out / "part-0.parquet")
            write(table.slice(half), out / "part-1.parquet")
        else:
            write(table, out / "part-0.parquet")
        print(f"{day_date(day)}: {table.num_rows} rows")

    print(f"broken partition {day_date(BROKEN_DAY)}: {broken}")


if __name__ == "__main__":
    main()
