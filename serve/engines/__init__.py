"""The engines that generate: the Engine contract, in-process vLLM, remote vLLM, their processes, starts, supervision, drain."""
