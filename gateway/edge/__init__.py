"""What browsers and backends talk to: the proxy, page tagging, px.js, /collect, /events, hooks.

HTTP in, events handed to the outbox; the pure work is delegated to gateway.pipeline.
"""
