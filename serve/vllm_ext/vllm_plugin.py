"""vLLM general plugin (entry point `vllm.general_plugins` -> `aligngate`): registers the value-head model classes.

vLLM calls this in every process it starts (API server, engine core, workers), so the out-of-tree
architecture resolves in the engine's subprocess too. One `<Arch>WithValueHead` per family `serve.vllm_ext.vllm_model`
wraps (Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3). Registration is by string, so no vLLM model code is
imported until a model actually uses the class. In a gateway's engine processes it
also ties their life to the gateway's (`serve.engines.engine_procs.child_setup`: process group, parent watchdog, pid file).
"""

from __future__ import annotations

from serve.vllm_ext.vllm_model import BASES, SUFFIX

ARCHITECTURES = {arch + SUFFIX: f"serve.vllm_ext.vllm_model:{arch}{SUFFIX}" for arch in BASES}


def register() -> None:
    from vllm import ModelRegistry

    from serve.engines.engine_procs import child_setup

    child_setup()  # first: a start-up that stalls later must still die with its gateway

    for arch, target in ARCHITECTURES.items():
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, target)
