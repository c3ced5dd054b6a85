"""The Kafka-free processing: intake and backpressure, the text and image lanes, the model queue, the
store writer and the reporter, with the ordered ack tracker and the record publisher behind a send port.

Imports core, models, sinks, tasks and ops; never Faust; nothing happens on import. The tests drive the
same path production runs, with fakes at its ports.
"""
