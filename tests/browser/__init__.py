"""Tests in headless Chromium: px.js, the rule triggers and the dashboard, end to end."""
