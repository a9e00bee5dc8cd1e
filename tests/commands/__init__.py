"""Tests of gateway.commands: the CLI commands, run against real stores and fakes."""
