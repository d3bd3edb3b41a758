"""The OpenAI-compatible HTTP surface: app, request schemas, handlers, errors, streaming, tools, structured outputs, admin API."""
