"""Market: the factor dataset, its sources (synthetic, S&P 500 sample, user files) and price formation."""
