"""Pipeline tests reuse the training tests' tiny model and data (one definition, in their conftest)."""

from tests.mbpo_core.training.conftest import _few_threads, tiny_data, tiny_model_dir

__all__ = ["_few_threads", "tiny_data", "tiny_model_dir"]
