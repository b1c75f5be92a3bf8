"""Analysis: AED, stylized facts, learning metrics and the report, all from DuckDB files."""
