"""An example vectorize-worker plugin (docs/models.md "Model family plugins", docs/tasks.md "Task type plugins").

``vw_example_plugin.families``: the ``hashing`` model family, registered under the entry-point group
``vectorize_worker.model_families`` in this package's pyproject.toml.
``vw_example_plugin.task_types``: the ``qa_pair_vectorization`` task type, registered under
``vectorize_worker.task_types``.
"""

__version__ = "0.1.0"
