"""Fake LLM providers for tests, the demo and benchmarks. Nothing in the operator imports this."""
