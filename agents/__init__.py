"""Agents: the investor agent, its persona, prompts, decision decoding and the LLM backend."""
