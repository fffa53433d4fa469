"""Switchyard: a Kubernetes operator that splits one model name's traffic across LLM providers."""
