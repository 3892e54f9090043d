"""The `--quick` testbed (datasets + trained base model), built once and cached on disk under
`.testbed-cache/<hash>` (or `$MBPO_TESTBED_CACHE/<hash>`), keyed by the source files that determine
its contents and the seed, so repeated local runs reuse it and a code change rebuilds it.

Shared by the test packages that need a real trained model (mbpo_core, the browser tests)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QUICK_TESTBED_SEED = 0
# Everything that decides the quick testbed's files: scenes, splits, training, and the model code.
_SOURCES = ("mbpo_core/testbed", "mbpo_core/models", "mbpo_core/data")


def testbed_source_hash(seed: int) -> str:
    digest = hashlib.sha256(f"quick-seed-{seed}".encode())
    for source in _SOURCES:
        path = REPO / source
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(REPO)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def build_quick_testbed(cache_root: Path, seed: int = QUICK_TESTBED_SEED) -> Path:
    """Path of the cached quick testbed, building it first if absent. Concurrent sessions build in
    private directories and the first to finish publishes by rename; the others reuse it."""
    from mbpo_core.testbed.build import BuildSpec, build_testbed

    target = cache_root / testbed_source_hash(seed)
    if (target / "build_report.json").is_file():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    private = cache_root / f"{target.name}.building-{os.getpid()}"
    shutil.rmtree(private, ignore_errors=True)
    build_testbed(private, BuildSpec.quick(seed))
    try:
        private.rename(target)
    except OSError:  # another session published first
        shutil.rmtree(private, ignore_errors=True)
    return target


def testbed_cache_root() -> Path:
    return Path(os.environ.get("MBPO_TESTBED_CACHE") or REPO / ".testbed-cache")


def quick_testbed_path() -> Path:
    """Root of the quick testbed: `datasets/<split>/manifest.jsonl`, `base_model/`, `build_report.json`."""
    return build_quick_testbed(testbed_cache_root())
