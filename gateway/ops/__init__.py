"""The operator's HTTP endpoints: /status, /health, /metrics (Prometheus) and who may see them.

The dashboard (gateway.admin) and the CLI commands (gateway.commands) have wings of their own.
"""
