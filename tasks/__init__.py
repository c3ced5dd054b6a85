"""The wire contracts and input preparation: the task schema, the output records, text fitting and
chunking, image loading with the SSRF-safe fetch, and the vector records a task becomes.

Imports core, models and sinks; nothing of Kafka or Faust; nothing happens on import.
"""
