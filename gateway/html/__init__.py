"""The streaming HTML scanner: tokens, CSS-like selectors, and the values a page holds.

Pure text in, facts out (no HTTP): the pipeline's rules and the edge's page tap both use it.
"""
