"""Durable and networked: the outbox and its SQLite schema, the sender, retries, the Graph client.

All SQL lives here (writes in the store modules, the operator side's reads in reads.py).
"""
