"""The test suite: it mirrors gateway/, one test module per module, on loopback only."""
