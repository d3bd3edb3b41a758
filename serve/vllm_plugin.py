"""vLLM general plugin (entry point `vllm.general_plugins` -> `aligngate`): registers the value-head model classes.

vLLM calls this in every process it starts (API server, engine core, workers), so the out-of-tree
architecture resolves in the engine's subprocess too. Registration is by string, so nothing heavy is imported
until a model actually uses the class.
"""

from __future__ import annotations

ARCHITECTURES = {
    "LlamaForCausalLMWithValueHead": "serve.vllm_model:LlamaForCausalLMWithValueHead",
}


def register() -> None:
    from vllm import ModelRegistry

    for arch, target in ARCHITECTURES.items():
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, target)
