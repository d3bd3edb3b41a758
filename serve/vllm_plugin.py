"""vLLM general plugin (entry point `vllm.general_plugins` -> `aligngate`): registers the value-head model classes.

vLLM calls this in every process it starts (API server, engine core, workers), so the out-of-tree
architecture resolves in the engine's subprocess too. One `<Arch>WithValueHead` per family `serve.vllm_model`
wraps (Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3). Registration is by string, so no vLLM model code is
imported until a model actually uses the class.
"""

from __future__ import annotations

from serve.vllm_model import BASES, SUFFIX

ARCHITECTURES = {arch + SUFFIX: f"serve.vllm_model:{arch}{SUFFIX}" for arch in BASES}


def register() -> None:
    from vllm import ModelRegistry

    for arch, target in ARCHITECTURES.items():
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, target)
