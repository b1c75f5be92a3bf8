"""Data sources that each produce a `MarketData`: synthetic, the S&P 500 sample, a user file."""
