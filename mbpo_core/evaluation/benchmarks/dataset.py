"""A benchmark used as an evaluation dataset: a service dataset registered with `format: benchmark`,
or an eval split of `mbpo run`. Torch-free (the API imports it to check a registration).

`BenchmarkSource` names the benchmark (a key of `BENCHMARKS`), its official files and its image
folder; `load()` runs that benchmark's own loader, so a registered benchmark is exactly what
`mbpo eval benchmark --name N --data D --images I` reads. `service_refusal` says why the service
cannot run a benchmark (unknown; or scored by a judge model, which runs are not given), `item_counts`
is what a dataset's stats show (items per split, subtask, ...).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from mbpo_core.evaluation.benchmarks import BENCHMARKS
from mbpo_core.evaluation.benchmarks.common import BenchmarkItem, scored_by_judge

# The meta key that groups a benchmark's items in its metric tables, most specific first: POPE's
# question files ("split"), MME's folders ("subtask"), AMBER's query types ("type"), the TSV
# benchmarks' categories ("category"). A benchmark with none of them (CHAIR) is one group, "all".
GROUP_KEYS = ("split", "subtask", "type", "category")


class Refusal(NamedTuple):
    code: str  # stable: "unknown_benchmark" | "judge_required"
    message: str


def service_refusal(name: str) -> Refusal | None:
    """Why a run cannot be scored on benchmark `name`, or None when it can."""
    module = BENCHMARKS.get(name)
    if module is None:
        return Refusal(
            "unknown_benchmark", f"unknown benchmark {name!r}; one of {', '.join(sorted(BENCHMARKS))}"
        )
    if scored_by_judge(module):
        # A judge is an external model (an OpenAI-compatible URL and a key) the user runs; the
        # service has no setting for one, so a run could only fail at its last stage.
        return Refusal(
            "judge_required",
            f"{name} is scored by a judge model, which the service does not configure; score it with "
            f"`mbpo eval benchmark --name {name} --judge-url URL --judge-model NAME` instead",
        )
    return None


def runnable_benchmarks() -> list[str]:
    """The benchmarks a run can be scored on, by name."""
    return sorted(name for name in BENCHMARKS if service_refusal(name) is None)


@dataclass(frozen=True)
class BenchmarkSource:
    """Benchmark `name`'s files (`data`: a file or a folder, as its loader takes them) and images."""

    name: str
    data: Path
    images: Path | None = None

    @property
    def module(self) -> ModuleType:
        if (refusal := service_refusal(self.name)) is not None:
            raise ValueError(refusal.message)
        return BENCHMARKS[self.name]

    def load(self, limit: int | None = None) -> list[BenchmarkItem]:
        """The items, as `mbpo eval benchmark` loads them (`limit`: the first N, as its --limit).
        Raises BenchmarkDataError naming the file and line of a problem."""
        items: list[BenchmarkItem] = self.module.load(self.data, self.images)
        return items[:limit] if limit is not None else items

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "data": str(self.data),
            "images": str(self.images) if self.images else None,
        }


def item_counts(items: Sequence[BenchmarkItem]) -> dict[str, Any]:
    """{"items": n, "group_by": key or None, "groups": {group: n}} in the items' order."""
    key = next((k for k in GROUP_KEYS if any(k in item.meta for item in items)), None)
    groups = Counter(str(item.meta.get(key, "-")) if key else "all" for item in items)
    return {"items": len(items), "group_by": key, "groups": dict(groups)}
