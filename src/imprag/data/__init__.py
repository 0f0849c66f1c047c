"""The benchmark: tasks and templates, readers of the packaged data, the builder, the importer of the
paper's task files, and built items."""

from imprag.data.benchmark import SPLITS, Benchmark, BenchmarkError, Item
from imprag.data.build import BuildConfig, build_benchmark
from imprag.data.evidence import CorpusSpec
from imprag.data.importers import TaskFileError
from imprag.data.importing import ImportConfig, import_benchmark
from imprag.data.sources import DataPackageError
from imprag.data.tasks import TASKS, Task, built_tasks, get_task, imported_tasks, tasks_of

__all__ = [
    "SPLITS",
    "TASKS",
    "Benchmark",
    "BenchmarkError",
    "BuildConfig",
    "CorpusSpec",
    "DataPackageError",
    "ImportConfig",
    "Item",
    "Task",
    "TaskFileError",
    "build_benchmark",
    "built_tasks",
    "get_task",
    "import_benchmark",
    "imported_tasks",
    "tasks_of",
]
