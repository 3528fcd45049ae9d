"""Tasks: everything that differs between classification, segmentation and sequence classification lives here;
nothing outside this package tests a task's name. `TASKS` is the registry; `get_task(name)` the lookup."""

from engine.errors import UnknownTask
from engine.public import public_face
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

# The public face the dashboard and the pages import from (engine.public: each module loads when first asked).
__getattr__, __dir__ = public_face(__name__, {
    "analysis": ("load",),
    "classification": ("CaseResult", "diagnose_cases", "diagnose_image", "raw_output", "scope_of"),
    "evaluation": ("compare_models",),
    "segmentation": ("CaseSegmentation", "export_seg", "mask_png", "raw_segmentation", "segment_case_image",
                     "segmentation_history"),
    "sequence": ("analyse_sequence", "raw_sequence_output", "sequence_cases", "sequence_images"),
})
