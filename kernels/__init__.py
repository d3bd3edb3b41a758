"""Fused policy heads: final RMSNorm -> [LM head | value head] (+ entropy). Reference, torch path, Triton kernel.

Keep this package cheap to import and without a `__version__`: transformers probes an importable `kernels`
(a Hugging Face package of the same name) and must keep finding it unavailable (tests/test_kernels_probe.py).
"""

# Lazy public names: `import kernels` stays free of torch/triton work until one of these is touched.
_LAZY = {
    "fused_heads": "kernels.dispatch",
    "HeadWeights": "kernels.weights",
    "HeadsOutput": "kernels.reference",
    "heads_reference": "kernels.reference",
    "FusedHeads": "kernels.module",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
