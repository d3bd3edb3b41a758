"""The aligngate serving gateway: OpenAI-compatible HTTP in front of vLLM engines, one per policy version."""
