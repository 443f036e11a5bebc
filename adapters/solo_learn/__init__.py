"""HVS adapter for solo_learn (placeholder)."""
