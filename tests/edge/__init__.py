"""Tests of gateway.edge: the proxy, page tagging, /collect, /events and webhooks."""
