"""Tasks: everything that differs between classification, segmentation and sequence classification lives here;
nothing outside this package tests a task's name. `TASKS` is the registry; `get_task(name)` the lookup."""

from engine.errors import UnknownTask
from engine.tasks import classification, segmentation, sequence
from engine.tasks.base import FormDefaults, Scored, Task

__all__ = ["Task", "Scored", "FormDefaults", "TASKS", "get_task", "task_names"]

TASKS: dict[str, Task] = {t.name: t for t in (classification.TASK, segmentation.TASK, sequence.TASK)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UnknownTask(f"Unknown task {name!r}. Available: {', '.join(TASKS)}")
    return TASKS[name]


def task_names() -> list[str]:
    return list(TASKS)
