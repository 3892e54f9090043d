"""Image-only Qwen processors, named like the stock ones.

The stock Qwen2-VL / Qwen2.5-VL processors also require a video processor, and the only video
processor needs torchvision, which this project does not install (the only wheel on its CPU
machines is a CUDA build that breaks beside the CPU torch; see the Makefile). These subclasses
drop the video argument from `__init__` (ProcessorMixin discovers its sub-processors from that
signature), so they construct, save and load with the PIL image processor alone. Everything
else, including the token expansion of `<|image_pad|>`, is the real Hugging Face code.

Each subclass carries its stock class's name on purpose: a saved checkpoint records
`"processor_class": "Qwen2VLProcessor"`, so `AutoProcessor`, TRL, vLLM and lmms-eval load it with
the stock class wherever torchvision is installed. Inside this project the adapters name these
classes explicitly.
"""

from __future__ import annotations

from typing import Any

import transformers


class Qwen2VLProcessor(transformers.Qwen2VLProcessor):
    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any
    ):
        super().__init__(
            image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs
        )


class Qwen2_5_VLProcessor(transformers.Qwen2_5_VLProcessor):
    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any
    ):
        super().__init__(
            image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs
        )
