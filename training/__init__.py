"""Training: the per-agent LoRA RL update, adapter lifecycle, rewards and prompt optimisation."""
