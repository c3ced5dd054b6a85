"""The ``qa_pair_vectorization`` task type: a question and its answer, embedded separately.

A task::

    {"task_type": "qa_pair_vectorization", "task_id": "faq-7",
     "data": {"question": "How do I reset my password?", "answer": "Open Settings, then Security."}}

becomes two vectors, ``vector_id("faq-7", 0)`` for the question and ``vector_id("faq-7", 1)`` for the
answer, each stored with its ``text`` and a ``role`` field (``"question"`` or ``"answer"``) beside the
worker's own payload fields and the task's ``metadata``. Both texts go through the text lane like a
batch's: batched with other tasks' texts, fitted to the model's limit (``long_text``), served by the
embedding cache. Registered in this package's pyproject.toml::

    [project.entry-points."vectorize_worker.task_types"]
    qa_pair_vectorization = "vw_example_plugin.task_types:QaPairType"
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.schema import NonEmptyText, Task, TaskBase
from tasks.types import TaskType

NAME = "qa_pair_vectorization"
#: the role of each vector, by item index
ROLES = ("question", "answer")


class QaPair(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    question: NonEmptyText = Field(description="The question; embedded alone, stored with role 'question'.")
    answer: NonEmptyText = Field(description="The answer; embedded alone, stored with role 'answer'.")


class QaPairTask(TaskBase):
    """A question and its answer, embedded separately (two vectors with a ``role``)."""

    task_type: Literal["qa_pair_vectorization"]
    data: QaPair


class QaPairType(TaskType):
    """Registered as ``qa_pair_vectorization`` (entry-point group ``vectorize_worker.task_types``)."""

    name = NAME
    model = QaPairTask
    lane = "text"

    def texts(self, task: Task) -> list[str]:
        assert isinstance(task, QaPairTask)
        return [task.data.question, task.data.answer]

    def item_payload(self, task: Task, index: int) -> dict[str, Any]:
        return {"role": ROLES[index]}
