#!/usr/bin/env python3
"""Serve a Milvus Lite database (milvus-lite 2.5.1, the real engine) over gRPC on 127.0.0.1:19530.

    python scripts/milvus_server.py DB_FILE [ADDRESS]

Runs until SIGTERM/SIGINT. Started and stopped by scripts/milvus.sh.
"""

from __future__ import annotations

import signal
import sys
import time


def main() -> int:
    try:
        from milvus_lite.server import Server
    except ImportError as exc:
        print(f"milvus_server: milvus-lite is not installed ({exc}); pip install 'milvus-lite==2.5.1' 'setuptools<82'")
        return 1
    db_file = sys.argv[1]
    address = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:19530"
    server = Server(db_file, address=address)
    if not server.init() or not server.start():
        print(f"milvus_server: Milvus Lite failed to start on {address} with {db_file}")
        return 1
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"milvus_server: serving {db_file} on {address}", flush=True)
    while not stopping and server._p is not None and server._p.poll() is None:
        time.sleep(0.2)
    code = 0 if stopping else 1
    server.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
