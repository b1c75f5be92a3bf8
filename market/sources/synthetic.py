"""A synthetic market whose factors carry a known, planted amount of signal.

Each category c has, per asset, a latent AR(1) series s_c with unit variance. The return from t to
t+1 loads on the latents at t with weights `signal[c]`, so `signal[c]` is the correlation between
s_c[t] and r[t+1]; idiosyncratic noise fills the remaining variance. The first factor of a
category is s_c plus a little noise; the others load weakly on s_c. It simplifies on purpose:
assets are independent, returns are Gaussian with constant volatility, volume is pure noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from market.data import CATEGORIES, MarketData, build_market_data

FACTOR_NAMES = {
    "technical": ("momentum_5d", "rsi_14", "ma_gap_20", "volume_trend"),
    "fundamental": ("value_score", "earnings_yield", "book_to_market", "profitability"),
    "sentiment": ("news_tone", "analyst_revisions", "social_buzz", "put_call_ratio"),
    "macro": ("rate_change", "credit_spread", "yield_curve_slope", "inflation_surprise"),
}
LATENT_PERSISTENCE = 0.5  # AR(1) coefficient of every latent signal, per trading day
FIRST_FACTOR_NOISE = 0.3  # sd of the noise on a category's first factor, in latent sd units
OTHER_FACTOR_LOADING = 0.2  # loading of the other factors on the latent; their noise has sd 1
INITIAL_CLOSE = 100.0  # currency units
MEAN_VOLUME = 1_000_000.0  # shares a day


def generate_synthetic(
    *,
    n_assets: int,
    n_days: int,
    start_date: str,
    signal: dict[str, float],
    factors_per_category: int = 2,
    daily_volatility: float = 0.01,  # sd of the daily simple return
    seed: int,
) -> MarketData:
    """`n_assets` assets "SYN0", "SYN1", ... over `n_days` business days from `start_date`.

    signal: category -> correlation of its latent at t with the return from t to t+1; categories
        left out have no signal. The squares must sum to less than 1.
    """
    _validate(signal, factors_per_category)
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(start_date, periods=n_days)
    assets = [f"SYN{index}" for index in range(n_assets)]
    loadings = np.array([signal.get(category, 0.0) for category in CATEGORIES])

    latents = _ar1_latents(rng, n_days, len(CATEGORIES), n_assets)  # (day, category, asset)
    noise_share = np.sqrt(1.0 - np.sum(loadings**2))
    predicted = np.einsum("c,tca->ta", loadings, latents[:-1])
    noise = noise_share * rng.standard_normal(predicted.shape)
    next_returns = daily_volatility * (predicted + noise)
    growth = np.vstack([np.ones((1, n_assets)), 1.0 + next_returns])
    closes = INITIAL_CLOSE * np.cumprod(growth, axis=0)
    volume_sd = 0.3  # of log volume; the mean below makes E[volume] = MEAN_VOLUME
    volumes = MEAN_VOLUME * rng.lognormal(-(volume_sd**2) / 2, volume_sd, size=(n_days, n_assets))

    prices = pd.DataFrame(
        {
            "date": np.repeat(dates, n_assets),
            "asset": np.tile(assets, n_days),
            "close": closes.ravel(),
            "volume": volumes.ravel(),
        }
    )
    factors = _factor_frame(rng, latents, dates, assets, factors_per_category)
    return build_market_data(factors, prices, source=f"synthetic(seed={seed})")


def _validate(signal: dict[str, float], factors_per_category: int) -> None:
    unknown = set(signal) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown signal categories {sorted(unknown)}; known: {CATEGORIES}")
    if sum(weight**2 for weight in signal.values()) >= 1.0:
        raise ValueError(f"the squares of the signal weights must sum to less than 1, got {signal}")
    if not 1 <= factors_per_category <= len(FACTOR_NAMES["technical"]):
        raise ValueError(f"factors_per_category must be in 1..{len(FACTOR_NAMES['technical'])}")


def _ar1_latents(
    rng: np.random.Generator, n_days: int, n_categories: int, n_assets: int
) -> np.ndarray:
    """Unit-variance AR(1) series, started from their stationary distribution."""
    shocks = rng.standard_normal((n_days, n_categories, n_assets))
    latents = np.empty_like(shocks)
    latents[0] = shocks[0]
    innovation_scale = np.sqrt(1.0 - LATENT_PERSISTENCE**2)
    for day in range(1, n_days):
        latents[day] = LATENT_PERSISTENCE * latents[day - 1] + innovation_scale * shocks[day]
    return latents


def _factor_frame(
    rng: np.random.Generator,
    latents: np.ndarray,
    dates: pd.DatetimeIndex,
    assets: list[str],
    factors_per_category: int,
) -> pd.DataFrame:
    """Long-format factors; a factor dated t is built from the latents at t only."""
    n_days, _, n_assets = latents.shape
    frames = []
    for category_index, category in enumerate(CATEGORIES):
        latent = latents[:, category_index, :]
        for factor_index, name in enumerate(FACTOR_NAMES[category][:factors_per_category]):
            noise = rng.standard_normal(latent.shape)
            if factor_index == 0:
                values = latent + FIRST_FACTOR_NOISE * noise
            else:
                values = OTHER_FACTOR_LOADING * latent + noise
            frames.append(
                pd.DataFrame(
                    {
                        "date": np.repeat(dates, n_assets),
                        "asset": np.tile(assets, n_days),
                        "category": category,
                        "name": name,
                        "value": values.ravel(),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)
