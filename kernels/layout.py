"""Where a value head lives inside a policy's HF directory: file and key names only, no torch.

The gateway reads these on its import chain (`serve.value_slots`), and a replica whose versions are all remote
vLLM servers never needs torch; `kernels.value_head` (the module that loads and saves heads) uses the same names.
"""

VALUE_HEAD_FILE = "value_head/value_head.safetensors"
TRL_WEIGHT, TRL_BIAS = "v_head.summary.weight", "v_head.summary.bias"
OPENRLHF_WEIGHT = "score.weight"
