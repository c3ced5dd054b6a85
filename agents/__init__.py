"""Faust agents and web views: thin glue between Kafka streams and :mod:`engine.pipeline`."""

from __future__ import annotations

from agents import intake, lifecycle, status, web  # noqa: F401  (registers agents, tables, views, SIGTERM drain)
