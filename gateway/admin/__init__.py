"""The operator's dashboard at {prefix}/admin: routes, session, the page's data and templates.

It reads the store through gateway.delivery.reads and renders with Jinja2 (autoescape on).
"""
