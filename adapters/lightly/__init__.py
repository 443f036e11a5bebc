"""HVS adapter for lightly (placeholder)."""
