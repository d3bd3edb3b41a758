"""What happens to an answer once scored: the reward monitor, its windows and alarms, text features, Prometheus metrics."""
