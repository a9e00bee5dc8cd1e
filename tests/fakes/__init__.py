"""Stand-ins on loopback: the upstream site, the fake Graph API, gateway subprocesses."""
