"""Tests of gateway.delivery: the outbox, its reads, the sender and the Graph client."""
