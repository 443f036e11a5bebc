"""HVS adapter for mmselfsup (placeholder)."""
