"""SmolVLM / SmolVLM2 (model_type "smolvlm"): Idefics3's image splitting and prompt layout with its own
classes, so the adapter is Idefics3's with SmolVLM's model and processor.

The stock SmolVLMProcessor cannot be built here: it requires a video processor (SmolVLMVideoProcessor
needs torchvision, which this project does not install) and the `num2words` package (used only to
spell out video frame counts). `SmolVLMProcessor` below is an image-only subclass, named like the
stock class on purpose (as mbpo_core.models.processors does for Qwen): a saved processor_config.json
names only stock classes (`"processor_class": "SmolVLMProcessor"`, `"image_processor_type":
"SmolVLMImageProcessor"`) and carries a stock `SmolVLMVideoProcessor` config (SmolVLM2's video
settings at this tile size), so AutoProcessor / TRL / vLLM load it with the stock classes wherever
torchvision and num2words are installed. Image processing and the `<image>` expansion are the real
Hugging Face code; the subclass also accepts a flat list of images for a batch of prompts, as
Idefics3Processor does.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import accumulate, pairwise
from typing import Any, ClassVar

import transformers
from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil
from transformers.image_utils import make_nested_list_of_images
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE
from transformers.processing_utils import ProcessorMixin

from mbpo_core.models.build import ModelSize, build_word_tokenizer
from mbpo_core.models.idefics3 import CHAT_WORDS, IMAGE_SPECIAL, Idefics3Adapter, config_kwargs, tile_geometry


class SmolVLMProcessor(transformers.SmolVLMProcessor):
    """The stock SmolVLMProcessor without a video processor object (no `video_processor` argument, so
    ProcessorMixin neither expects nor builds one; `to_dict` still saves a stock video config) and
    without the num2words check (videos only)."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        image_seq_len: int = 169,
        chat_template: str | None = None,
        **kwargs: Any,
    ):
        # The stock __init__, less the video processor and the num2words import check.
        self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
        self.image_token = getattr(tokenizer, "image_token", "<image>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
        self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
        self.image_seq_len = image_seq_len
        self.video_token = getattr(tokenizer, "video_token", "<video>")
        kwargs.pop("video_processor", None)  # the stock video config `to_dict` saves: not ours to build
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        # Save a stock SmolVLMVideoProcessor config beside the image processor's, so the stock class
        # (which requires a video processor) loads the directory where torchvision is installed.
        output = super().to_dict()
        output["video_processor"] = video_processor_config(self.image_processor)
        return output

    def prepare_inputs_layout(  # type: ignore[override]
        self, images: Any = None, text: Any = None, videos: Any = None, **kwargs: Any
    ) -> Any:
        # The stock class reads a flat list of images as ONE sample's images, so a batch of prompts
        # needs [[image], [image], ...]; like Idefics3Processor, split a flat list over the prompts
        # by their `<image>` counts (nested lists pass through unchanged).
        if images is not None and text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            nested: list[Any] = make_nested_list_of_images(self.image_processor.fetch_images(images))
            counts = [t.count(self.image_token) for t in texts]
            if len(nested) == 1 and len(texts) > 1 and sum(counts) == len(nested[0]):
                starts = [0, *accumulate(counts)]
                images = [nested[0][a:b] for a, b in pairwise(starts)]
        return super().prepare_inputs_layout(images=images, text=text, videos=videos, **kwargs)

    def apply_chat_template(  # type: ignore[override]
        self, conversation: Any, chat_template: str | None = None, **kwargs: Any
    ) -> Any:
        # The stock override only adds video sampling defaults read off the (absent) video processor.
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


def video_processor_config(image_processor: Any) -> dict[str, Any]:
    """SmolVLM2's video processor settings for this image processor: frames are not split, each is
    resized to one tile (like the global image), same statistics; 1 fps, up to 64 frames."""
    tile = dict(image_processor.max_image_size)
    return {
        "video_processor_type": "SmolVLMVideoProcessor",
        "do_convert_rgb": True,
        "do_image_splitting": False,
        "do_normalize": bool(image_processor.do_normalize),
        "do_pad": True,
        "do_rescale": bool(image_processor.do_rescale),
        "do_resize": True,
        "do_sample_frames": False,
        "image_mean": list(image_processor.image_mean),
        "image_std": list(image_processor.image_std),
        "max_image_size": tile,
        "resample": int(image_processor.resample),
        "rescale_factor": float(image_processor.rescale_factor),
        "size": tile,
        "video_sampling": {"fps": 1, "max_frames": 64, "video_size": tile},
    }


class SmolVLMAdapter(Idefics3Adapter):
    family = "smolvlm"
    model_class: ClassVar[Any] = SmolVLMForConditionalGeneration
    processor_class: ClassVar[Any] = SmolVLMProcessor


# ---- tiny models (mbpo_core.models.build) --------------------------------------------------------

# SmolVLM2's tokens: ChatML-style begin/pad around Idefics3's image markers, plus the video token.
SMOLVLM_SPECIAL = {
    "pad": "<|im_end|>",
    "bos": "<|im_start|>",
    "eos": "<end_of_utterance>",  # the end of a turn: what generation stops at
    **IMAGE_SPECIAL,
    "video": "<video>",
}


def tiny_processor(
    words: Iterable[str], *, image_size: int, max_image_size: int | None, lowercase: bool
) -> Any:
    """Image-only SmolVLMProcessor with the PIL image processor (LANCZOS, mean = std = 0.5) and
    SmolVLM2's own chat template; `image_size` = tile side, `max_image_size` = longest edge
    (idefics3.tile_geometry)."""
    tile, longest, seq_len = tile_geometry(image_size, max_image_size)
    tokenizer = build_word_tokenizer([*CHAT_WORDS, *words], SMOLVLM_SPECIAL, lowercase=lowercase)
    image_processor = SmolVLMImageProcessorPil(
        size={"longest_edge": longest}, max_image_size={"longest_edge": tile}
    )
    return SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=seq_len,
        chat_template=DEFAULT_CHAT_TEMPLATE,
    )


def tiny_config(processor: Any, size: ModelSize) -> Any:
    return SmolVLMConfig(**config_kwargs(processor, size))


ADAPTER = SmolVLMAdapter
