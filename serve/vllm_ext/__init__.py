"""What aligngate adds inside vLLM: the plugin, the value-head model classes, patches, version checks, value slots."""
