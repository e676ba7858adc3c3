"""The bilingual (English/Korean) task suite: task definitions, loaders and user-data readers.

Quick use::

    from promptatlas.tasks import get_task, load_split
    task = get_task("sa", "ko")
    train = load_split("sa", "ko", "train")                       # bundled sample
    full = load_split("sa", "ko", "train", data_dir="../shared/data")  # original files

Your own task: a task file (:mod:`promptatlas.tasks.taskfile`), used wherever a task is named::

    task = get_task("my-task.yaml", "en")     # read, validated and registered as its name
    train = load_split("my-task.yaml", "en", "train")

See :mod:`promptatlas.tasks.specs` (tasks, label order), :mod:`promptatlas.tasks.registry`
(built-in and registered tasks, data files), :mod:`promptatlas.tasks.sources` (how each original
dataset is parsed and split) and :mod:`promptatlas.tasks.files` (user files).
"""

from promptatlas.tasks.errors import DataError, UnknownTaskError
from promptatlas.tasks.files import load_file, load_hf_dataset
from promptatlas.tasks.loaders import SAMPLE_LIMITS, load_split
from promptatlas.tasks.registry import load_task_file
from promptatlas.tasks.specs import (
    TASKS,
    Example,
    TaskSpec,
    TaskVariant,
    get_task,
    list_tasks,
)
from promptatlas.tasks.taskfile import TaskDefinition, TaskFileError, read_task_file

__all__ = [
    "SAMPLE_LIMITS",
    "TASKS",
    "DataError",
    "Example",
    "TaskDefinition",
    "TaskFileError",
    "TaskSpec",
    "TaskVariant",
    "UnknownTaskError",
    "get_task",
    "list_tasks",
    "load_file",
    "load_hf_dataset",
    "load_split",
    "load_task_file",
    "read_task_file",
]
