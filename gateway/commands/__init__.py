"""The CLI's commands beyond `serve`: doctor, queue, rules test, send-test-event, graph checks.

Each takes settings and arguments, does its job, prints the result and returns an exit code.
"""
