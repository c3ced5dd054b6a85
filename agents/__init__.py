"""Faust agents: thin glue between Kafka streams and :mod:`app.pipeline`."""

from __future__ import annotations

from agents import intake  # noqa: F401  (registers the agent)
