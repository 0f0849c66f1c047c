"""The benchmark: tasks and templates, readers of the packaged data, the builder, and built items."""

from imprag.data.benchmark import SPLITS, Benchmark, BenchmarkError, Item
from imprag.data.build import BuildConfig, build_benchmark
from imprag.data.sources import DataPackageError
from imprag.data.tasks import TASKS, Task, get_task, tasks_of

__all__ = [
    "SPLITS",
    "TASKS",
    "Benchmark",
    "BenchmarkError",
    "BuildConfig",
    "DataPackageError",
    "Item",
    "Task",
    "build_benchmark",
    "get_task",
    "tasks_of",
]
