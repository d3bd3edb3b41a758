"""Rewards of answers: the in-pass value, the cache, the audit model, review queue, feedback, best-of-n, the reward floor."""
