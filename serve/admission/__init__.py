"""Who gets in: admission slots, the adaptive limit, rate limits, the body guard, API keys."""
