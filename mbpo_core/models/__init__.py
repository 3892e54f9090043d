"""Vision-language models behind one adapter interface, one module per family.

info.py        what a model directory holds (family, safetensors only, no remote code); light, no torch
loader.py      `load_adapter(path)`: the directory's family adapter with model and processor loaded
device.py      where and in which dtype a model runs ("auto" -> cuda/bf16 or cpu/float32)
base.py        the `VLMAdapter` contract: prompts, teacher-forced log-probs, generation, `pixel_inputs`
preprocess.py  differentiable resize / normalise / patchify from [0,1] pixels (tested equal to HF)
processors.py  image-only Qwen2/2.5-VL processors (their stock ones need torchvision for video)
qwen2_vl.py, qwen2_5_vl.py, qwen3_vl.py, qwen3_vl_moe.py, llava.py, llava_onevision.py,
internvl.py, gemma3.py, idefics3.py, smolvlm.py
               the families: each its adapter and its tiny builder (docs/models.md)
build.py       tiny random models of each family from configs (tests, the testbed)

May import: mbpo_core.config only (every other package of the core builds on this one).
"""
