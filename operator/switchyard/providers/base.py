"""The interface every provider module fills in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class ClientApi(StrEnum):
    """The two chat APIs clients speak, by the name the data plane uses for them."""

    OPENAI = "openai"  # POST /v1/chat/completions
    ANTHROPIC = "anthropic"  # POST /v1/messages


# The Messages API's version, sent with every request to a provider that speaks it.
ANTHROPIC_VERSION = "2023-06-01"
# Headers every request in an API carries, whoever serves it.
API_HEADERS: dict[ClientApi, dict[str, str]] = {
    ClientApi.OPENAI: {},
    ClientApi.ANTHROPIC: {"anthropic-version": ANTHROPIC_VERSION},
}


@dataclass(frozen=True)
class Auth:
    """How a provider takes an API key: `header: prefix + key`."""

    header: str
    prefix: str = ""

    def headers(self, key: str | None) -> dict[str, str]:
        return {self.header: self.prefix + key} if key else {}


BEARER = Auth("authorization", "Bearer ")


@dataclass(frozen=True)
class Provider:
    """One provider's terms.

    api: the chat API it serves natively.
    auth: how it takes the key.
    path_base: what replaces a client path's leading `/v1`, given the backend URL's path
      (without a trailing slash), the provider's model name and the API version.
    query: the query string every request carries, given the API version.
    probe_path: the listing a probe reads, under the backend URL, given the API version.
    other_apis: whether it serves OpenAI's other endpoints (embeddings, completions, ...).
    """

    name: str
    api: ClientApi
    auth: Auth
    path_base: Callable[[str, str, str | None], str]
    probe_path: Callable[[str | None], str]
    query: Callable[[str | None], str] = field(default=lambda api_version: "")
    other_apis: bool = True

    def probe(
        self, url: str, api_version: str | None, key: str | None
    ) -> tuple[str, dict[str, str]]:
        """The URL and headers of the cheap listing that proves the provider answers."""
        return url + self.probe_path(api_version), {
            **API_HEADERS[self.api],
            **self.auth.headers(key),
        }
