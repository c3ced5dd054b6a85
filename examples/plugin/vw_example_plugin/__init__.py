"""An example vectorize-worker plugin (docs/models.md, "Model family plugins").

``vw_example_plugin.families``: the ``hashing`` model family, registered under the entry-point group
``vectorize_worker.model_families`` in this package's pyproject.toml.
"""

__version__ = "0.1.0"
