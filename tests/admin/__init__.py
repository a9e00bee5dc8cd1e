"""Tests of gateway.admin: the dashboard's routes, data and page, against real stores."""
