"""`[data]` and `[market]`: where prices and factors come from, and how the market clears and pays."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.schema import Section
from market.data import CATEGORIES


class SyntheticConfig(Section):
    n_assets: int = Field(1, ge=1, le=50)
    n_days: int = Field(250, ge=10, le=100_000, description="Trading days generated.")
    daily_volatility: float = Field(0.01, gt=0.0, le=0.2, description="Daily return volatility (0.01 = 1 %).")
    factors_per_category: int = Field(2, ge=1, le=4, description="Factors per category (at most 4 names exist per category).")
    signal: dict[str, float] = Field(
        default_factory=lambda: {"fundamental": 0.4},
        description="Per category: correlation of its latent factor at t with the return t -> t+1.",
    )

    @field_validator("signal")
    @classmethod
    def _signal_is_valid(cls, signal: dict[str, float]) -> dict[str, float]:
        for category, value in signal.items():
            if category not in CATEGORIES:
                raise ValueError(f"unknown category {category!r}; use one of {', '.join(CATEGORIES)}")
            if not -1.0 < value < 1.0:
                raise ValueError(f"signal of {category!r} must be in (-1, 1), got {value}")
        if sum(v * v for v in signal.values()) >= 1.0:
            raise ValueError("the squared signals must sum to less than 1")
        return signal


class DataConfig(Section):
    source: Literal["synthetic", "sp500", "file"] = Field("synthetic", description="Where the factors and prices come from.")
    path: str | None = Field(None, description="CSV or Parquet file (source = 'file'); see docs/data.md.")
    assets: list[str] = Field(default_factory=list, description="Assets to trade; empty = all.")
    start: str | None = Field(None, description="First trading date (ISO), or the data's first date.")
    end: str | None = Field(None, description="Last date of data to load (ISO), or the data's last date.")
    every: int = Field(1, ge=1, le=10_000, description="Decide on every K-th trading date from data.start (1 = every day), so a run's steps can span years; each decision is still paid by the next day's return, and on the days between, when nobody trades, the price follows the data.")
    synthetic: SyntheticConfig = SyntheticConfig()

    @model_validator(mode="after")
    def _file_needs_path(self) -> DataConfig:
        if self.source == "file" and not self.path:
            raise ValueError("source = 'file' needs data.path")
        return self


class MarketConfig(Section):
    impact: float = Field(0.0, ge=0.0, le=1.0, description="Log-price move per unit of net demand (net demand is in [-1, 1]).")
    noise: float = Field(0.0, ge=0.0, le=0.5, description="Std of extra daily log-return noise.")
    initial_price: float = Field(100.0, gt=0.0, description="Price at step 0 (currency units).")
    reward: Literal["linear", "risk_adjusted"] = Field("linear", description="The payoff rule: 'linear' = return * depth; 'risk_adjusted' subtracts a variance penalty scaled by risk preference (market/payoff.py).")
    risk_aversion: float = Field(20.0, ge=0.0, description="lambda of the risk-adjusted payoff: reward = r*d - 0.5*lambda*(1-risk_preference)*d^2*var.")
