"""Tests of gateway.pipeline: rule files, matching, extraction, events, normalization."""
