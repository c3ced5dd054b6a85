"""Produce text tasks to Kafka, keyed so they spread over the partitions; print ``task_id partition`` per task.

The "client outside" of scripts/containers.sh: run on the host against the compose stack's published
Kafka listener. Usage: send_tasks.py BOOTSTRAP PREFIX COUNT COLLECTION
"""

import asyncio
import json
import sys

from aiokafka import AIOKafkaProducer


async def main(bootstrap: str, prefix: str, count: int, collection: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(count):
            task_id = f"{prefix}-{i}"
            task = {
                "task_type": "text_vectorization",
                "task_id": task_id,
                "data": f"container test text {task_id}",
                "collection": collection,
            }
            meta = await producer.send_and_wait("vectorization-tasks", json.dumps(task).encode(), key=task_id.encode())
            print(task_id, meta.partition)
    finally:
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
