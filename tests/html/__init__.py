"""Tests of gateway.html: the scanner checked against the HTML spec and Chromium."""
