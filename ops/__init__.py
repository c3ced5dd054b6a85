"""Operating the worker: Prometheus metrics, log configuration, Redis heartbeats.

Imports core only; nothing happens on import.
"""
