"""capi-gateway: a first-party gateway from a website to Meta's Conversions API."""

__version__ = "0.1.0"
