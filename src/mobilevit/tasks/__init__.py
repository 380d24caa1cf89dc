"""The tasks: one :class:`~mobilevit.tasks.base.Task` object each. A new task is one module with a
``Task`` subclass, registered in :data:`TASKS`."""

from __future__ import annotations

from torch import nn

from mobilevit.models.factory import task_of
from mobilevit.tasks.base import Task, to_device
from mobilevit.tasks.classification import Classification
from mobilevit.tasks.detection import Detection
from mobilevit.tasks.segmentation import Segmentation

TASKS: dict[str, Task] = {task.name: task for task in (Classification(), Segmentation(), Detection())}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def task_for(model: nn.Module) -> Task:
    """The task of a built model (timm's and Hugging Face's classifiers included)."""
    return get_task(task_of(model))


__all__ = ["TASKS", "Task", "get_task", "task_for", "to_device"]
