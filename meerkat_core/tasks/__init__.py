"""Classification tasks posed as prompt + label word, and their data."""

from meerkat_core.tasks.registry import BUILTIN_TASKS, DEFAULT_TASK, PAPER_TASKS, get_task, task_from_file
from meerkat_core.tasks.sources import TaskData, dataset_fingerprint, load_local_files, load_task_data
from meerkat_core.tasks.spec import DataSource, TaskSpec

__all__ = [
    "BUILTIN_TASKS",
    "DEFAULT_TASK",
    "DataSource",
    "PAPER_TASKS",
    "TaskData",
    "TaskSpec",
    "dataset_fingerprint",
    "get_task",
    "load_local_files",
    "load_task_data",
    "task_from_file",
]
