"""Fused policy heads: final RMSNorm -> [LM head | value head] (+ entropy). Reference, torch path, Triton kernel.

Keep this package cheap to import and without a `__version__`: transformers probes an importable `kernels`
(a Hugging Face package of the same name) and must keep finding it unavailable (tests/test_kernels_probe.py).
"""
