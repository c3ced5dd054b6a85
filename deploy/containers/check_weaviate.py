"""Which tasks of a collection are stored in Weaviate, and by which worker: ``task_id worker_id`` per object.

Used by scripts/containers.sh against the compose stack's published Weaviate port (standard library only).
Usage: check_weaviate.py WEAVIATE_URL CLASS
"""

import json
import sys
import urllib.error
import urllib.request


def main(url: str, cls: str) -> None:
    query = {"query": "{ Get { " + cls + "(limit: 10000) { task_id worker_id } } }"}
    request = urllib.request.Request(
        f"{url}/v1/graphql", data=json.dumps(query).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.load(response)
    except (urllib.error.URLError, OSError) as exc:
        sys.exit(f"check_weaviate.py: querying {url}/v1/graphql failed ({exc}); is the stack's Weaviate up?")
    if body.get("errors"):  # the class does not exist yet: nothing stored
        return
    for obj in (body.get("data") or {}).get("Get", {}).get(cls) or []:
        print(obj["task_id"], obj["worker_id"])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
