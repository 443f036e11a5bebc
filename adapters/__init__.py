"""Host adapters, installed as ``hvs_plugins.adapters`` (never as a top-level ``adapters``).

Each adapter imports its host framework and the core (``hvs_plugins``) only.
"""
