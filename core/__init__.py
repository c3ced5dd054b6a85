"""The shared kernel: errors, settings, ids, retry, secrets, the metadata contract.

Imports nothing of the project's other packages and does nothing on import (no settings read, no
folder made): every layer above may import it, including ``models`` and ``sinks``.
"""
