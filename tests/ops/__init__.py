"""Tests of gateway.ops: /status, /health and /metrics (Prometheus exposition)."""
