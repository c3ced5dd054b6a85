"""Faust agents and web views: thin glue between Kafka streams and :mod:`app.pipeline`."""

from __future__ import annotations

from agents import intake, web  # noqa: F401  (registers the agent and the views)
