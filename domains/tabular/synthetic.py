"""A seeded synthetic card-transaction data set with fraud, and the schema of what a fraudster controls.

One row is one card transaction:

============================  ==========  ================================================  ==========
column                        type        meaning                                           attacker
============================  ==========  ================================================  ==========
``amount``                    continuous  amount in euros, 1 to 5000                        changes it (0.002 per euro)
``hour``                      integer     local hour 0-23                                   changes it (0.1 per hour)
``merchant_category``         categorical grocery, fuel, restaurant, online_retail,        changes it (0.5 per change)
                                          electronics, travel, gambling
``country``                   categorical home, neighbour, foreign_eu, foreign_far          changes it (0.75 per change)
``distance_from_home_km``     continuous  0 to 10000                                        changes it (0.2 per 1000 km)
``card_present``              binary      1 if the card was at the terminal                 changes it (1)
``txn_count_24h``             integer     the card's transactions in the last 24 h, 0-60    may only add (0.5 each)
``account_age_days``          integer     age of the account, 0-4000                        immutable
``customer_age``              integer     the cardholder's age, 18-90                       immutable
``is_fraud``                  target      1 for fraud
============================  ==========  ================================================  ==========

Fraud (about 6% of rows) follows four patterns:

- **card-not-present spree** (15% of the fraud): large online amounts at night in electronics,
  online retail or gambling, from abroad, card not present. Every sign lies in features the
  fraudster controls, so any model can be evaded on these rows: they are the share of fraud that
  no hardening can keep at the default budget.
- **card testing, then a spree** (35%): the same cash-out after a burst of small test charges on
  the stolen card, so ``txn_count_24h`` is high; the fraudster cannot undo past transactions.
- **new-account bust-out** (25%): accounts younger than 30 days with many transactions in the
  last 24 h: the fraudster can neither make the account older nor undo past transactions.
- **cloned card** (25%): card present far from home, abroad, mid-size amounts, after the
  counterfeit was tried at a few terminals (a raised ``txn_count_24h``).

The default budget (3.0) lets a fraudster, say, switch the merchant category (0.5) and the country
(0.75), claim the card was present (1), shift the hour by 5 (0.5) and lower the amount by 125 euros
(0.25).

Example:
    >>> df = generate(1000, seed=0)
    >>> list(df.columns)[:3], round(float(df["is_fraud"].mean()), 2)
    (['amount', 'hour', 'merchant_category'], 0.05)
    >>> bool(card_schema().validate(df, df).all())
    True
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from domains.tabular.schema import Column, Schema

__all__ = ["CATEGORIES", "COUNTRIES", "DEFAULT_BUDGET", "card_schema", "generate"]

CATEGORIES = ["grocery", "fuel", "restaurant", "online_retail", "electronics", "travel", "gambling"]
COUNTRIES = ["home", "neighbour", "foreign_eu", "foreign_far"]
DEFAULT_BUDGET = 3.0


def card_schema(budget: float = DEFAULT_BUDGET) -> Schema:
    """The threat model of the synthetic transactions (see the module docstring)."""
    return Schema(
        [
            Column("amount", "continuous", mutable=True, lower=1.0, upper=5000.0, cost=0.002),
            Column("hour", "integer", mutable=True, lower=0, upper=23, cost=0.1),
            Column("merchant_category", "categorical", mutable=True, categories=CATEGORIES, cost=0.5),
            Column("country", "categorical", mutable=True, categories=COUNTRIES, cost=0.75),
            Column("distance_from_home_km", "continuous", mutable=True, lower=0.0, upper=10000.0, cost=0.0002),
            Column("card_present", "binary", mutable=True, cost=1.0),
            Column("txn_count_24h", "integer", mutable=True, lower=0, upper=60, direction="increase", cost=0.5),
            Column("account_age_days", "integer", lower=0, upper=4000),
            Column("customer_age", "integer", lower=18, upper=90),
        ],
        budget=budget,
        target="is_fraud",
    )


def _legit(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    country = rng.choice(len(COUNTRIES), n, p=[0.85, 0.08, 0.05, 0.02])
    distance = rng.exponential(15.0, n) + np.where(country > 0, rng.uniform(50, 3000, n), 0.0)
    return {
        "amount": rng.lognormal(3.5, 1.0, n),
        "hour": np.clip(np.round(rng.normal(14, 4, n)), 0, 23),
        "merchant_category": rng.choice(len(CATEGORIES), n, p=[0.3, 0.15, 0.2, 0.15, 0.08, 0.08, 0.04]),
        "country": country,
        "distance_from_home_km": distance,
        "card_present": (rng.uniform(size=n) < 0.7).astype(float),
        "txn_count_24h": rng.poisson(2.0, n).astype(float),
        "account_age_days": np.where(rng.uniform(size=n) < 0.03, rng.integers(0, 30, n), rng.integers(30, 4000, n)),
        "customer_age": rng.integers(18, 91, n),
    }


def _fraud(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    cols = _legit(rng, n)
    pattern = rng.choice(4, n, p=[0.15, 0.35, 0.25, 0.25])
    spree, bust, cloned = pattern <= 1, pattern == 2, pattern == 3
    tests = {1: 10.0, 3: 8.0}  # card testing: mean transactions in the last 24 h before the fraud
    for p, mean in tests.items():
        cols["txn_count_24h"][pattern == p] = rng.poisson(mean, int((pattern == p).sum()))
    ns, nb, nc = int(spree.sum()), int(bust.sum()), int(cloned.sum())
    # card-not-present cash-out: only attacker-controlled features
    cols["amount"][spree] = rng.lognormal(6.0, 0.5, ns)
    cols["hour"][spree] = rng.integers(0, 6, ns)
    cols["merchant_category"][spree] = rng.choice([3, 4, 6], ns)
    cols["country"][spree] = rng.choice([2, 3], ns)
    cols["distance_from_home_km"][spree] = rng.uniform(500, 8000, ns)
    cols["card_present"][spree] = 0.0
    # new-account bust-out: immutable account age, increase-only velocity
    cols["account_age_days"][bust] = rng.integers(0, 30, nb)
    cols["txn_count_24h"][bust] = rng.poisson(12.0, nb)
    cols["amount"][bust] = rng.lognormal(5.0, 0.7, nb)
    # cloned card
    cols["card_present"][cloned] = 1.0
    cols["country"][cloned] = rng.choice([2, 3], nc)
    cols["distance_from_home_km"][cloned] = rng.uniform(800, 9000, nc)
    cols["amount"][cloned] = rng.lognormal(5.5, 0.6, nc)
    return cols


def generate(n: int, seed: int = 0, fraud_rate: float = 0.06) -> pd.DataFrame:
    """``n`` transactions (a share ``fraud_rate`` of them fraud), the same for the same seed."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(size=n) < fraud_rate
    legit, fraud = _legit(rng, n), _fraud(rng, n)
    cols = {k: np.where(y, fraud[k], legit[k]) for k in legit}
    df = pd.DataFrame({
        "amount": np.round(np.clip(cols["amount"], 1.0, 5000.0), 2),
        "hour": np.clip(cols["hour"], 0, 23).astype(np.int64),
        "merchant_category": np.asarray(CATEGORIES, dtype=object)[cols["merchant_category"].astype(int)],
        "country": np.asarray(COUNTRIES, dtype=object)[cols["country"].astype(int)],
        "distance_from_home_km": np.round(np.clip(cols["distance_from_home_km"], 0.0, 10000.0), 1),
        "card_present": cols["card_present"].astype(np.int64),
        "txn_count_24h": np.clip(cols["txn_count_24h"], 0, 60).astype(np.int64),
        "account_age_days": cols["account_age_days"].astype(np.int64),
        "customer_age": cols["customer_age"].astype(np.int64),
        "is_fraud": y.astype(np.int64),
    })
    return df
