"""Pure and synchronous: rule files, matching, extraction, event building, normalize and hash.

No I/O, no aiohttp, no SQL: facts in, outbox rows out, testable without a socket.
"""
