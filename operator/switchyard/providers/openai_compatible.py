"""A self-hosted server with OpenAI's API (vLLM, Ollama, ...): OpenAI's terms, at its own URL."""

from dataclasses import replace

from switchyard.providers import openai

PROVIDER = replace(openai.PROVIDER, name="OpenAICompatible")
