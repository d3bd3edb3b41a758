"""Offline RLHF lifecycle: labels -> reward model -> SFT / DPO / PPO -> distill -> evaluate -> gate -> export."""
