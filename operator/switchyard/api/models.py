"""Pydantic models of the two custom resources: the single source of truth for `crds/`.

Every field carries a description (it becomes `kubectl explain` text) and every cross-field
rule is a CEL expression, so the API server refuses bad input at `kubectl apply` time.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
import urllib.parse
from collections.abc import Iterable
from decimal import ROUND_CEILING, Decimal, localcontext
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

JsonDict = dict[str, Any]

GROUP = "switchyard.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
# A DNS name, or `*.` and one: what a hostname pattern may be.
HOSTNAME_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DURATION = r"^([0-9]{1,6}(\.[0-9]{1,9})?(ms|s|m|h))+$"
# Every duration of the API lies between these: below, Envoy would round it to nothing;
# above, nothing is meant (and CEL's durations overflow at about 292 years).
MIN_DURATION, MAX_DURATION = "1ms", "24h"

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration written like `500ms`, `15s`, `1m30s` (the CRD's own syntax)."""
    if not re.fullmatch(DURATION, text):
        raise ValueError(f"{text!r} is not a duration such as 500ms, 15s or 1m")
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def _duration_in_range(value: str) -> str:
    if not parse_duration(MIN_DURATION) <= parse_duration(value) <= parse_duration(MAX_DURATION):
        raise ValueError(f"duration {value!r} must be between {MIN_DURATION} and {MAX_DURATION}")
    return value


# A Kubernetes quantity (resource.Quantity) with no sign, since resources are never negative.
QUANTITY = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
QUANTITY_MAX_LENGTH = 64
_QUANTITY = re.compile(QUANTITY)
_BINARY_POWERS = {"": 0, "Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL_EXPONENTS = {
    "n": -9,
    "u": -6,
    "m": -3,
    "": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}
_NANO = Decimal("1e-9")
# The API server's own bound on a quantity (an int64 of base units).
MAX_QUANTITY = Decimal(2**63 - 1)


def _parse_quantity(text: str) -> tuple[Decimal, str]:
    """A quantity's value and the form it is written in: binary (Ki, Mi, ...), decimal
    (m, k, M, ... or none) or exponent (e3)."""
    match = _QUANTITY.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a quantity such as 500m, 2, 128Mi or 1Gi")
    number, suffix = Decimal(match.group(1)), match.group(3) or ""
    with localcontext(prec=80):
        if suffix in _BINARY_POWERS and suffix:
            value, form = number * 1024 ** _BINARY_POWERS[suffix], "binary"
        elif suffix in _DECIMAL_EXPONENTS:
            value, form = number.scaleb(_DECIMAL_EXPONENTS[suffix]), "decimal"
        else:
            value, form = number.scaleb(int(suffix[1:])), "exponent"
    if value > MAX_QUANTITY:
        raise ValueError(f"{text!r} is larger than any resource quantity ({MAX_QUANTITY})")
    return value, form


def parse_quantity(text: str) -> Decimal:
    """The value of a Kubernetes quantity: `500m` is 0.5, `1Gi` is 1073741824."""
    return _parse_quantity(text)[0]


def _kept_as_written(text: str) -> bool:
    """Whether the API server keeps a quantity's own text. resource.ParseQuantity does when
    the digits pass its test of canonical form, which reads the text, not the value: `7Mi`,
    `100m`, `1.` and `1E3` are kept; `1024Mi`, `0.5` and `2000m` are rewritten."""
    match = _QUANTITY.fullmatch(text)
    if text == "0" or not match:
        return text == "0"
    whole, _, fraction = match.group(1).partition(".")
    whole = whole.lstrip("0") or "0"
    digits, suffix = whole + fraction, match.group(3) or ""
    if suffix in _BINARY_POWERS and suffix:
        # Its fast path: whole numbers with few digits; kept unless a multiple of 8.
        fits = 15 - len(whole) - 3 * _BINARY_POWERS[suffix] - 1 >= 0
        return not fraction and fits and int(digits) % 8 != 0
    exponent = _DECIMAL_EXPONENTS[suffix] if suffix in _DECIMAL_EXPONENTS else int(suffix[1:])
    scale = exponent - len(fraction)
    return (
        len(digits) <= 18
        and scale >= -9
        and scale % 3 == 0
        and not digits.endswith("000")
        and not digits.startswith("0")
    )


def canonical_quantity(text: str) -> str:
    """A quantity as the API server writes it back (resource.Quantity's canonical form:
    `1024Mi` becomes `1Gi`, `2000m` becomes `2`, `0.5` becomes `500m`), so that what the
    operator applies compares equal to what it reads again."""
    value, form = _parse_quantity(text)
    if _kept_as_written(text):
        return text
    with localcontext(prec=80):
        # The API server keeps nothing finer than a nano-unit, rounding up.
        value = value.quantize(_NANO, rounding=ROUND_CEILING)
        if value == 0:
            return "0"
        if form == "binary" and value >= 1024 and value == value.to_integral_value():
            mantissa, power = int(value), 0
            while mantissa % 1024 == 0 and power < 6:
                mantissa, power = mantissa // 1024, power + 1
            suffixes = {p: s for s, p in _BINARY_POWERS.items()}
            return f"{mantissa}{suffixes[power]}"
        # Decimal forms: the smallest integer mantissa at an exponent that is a multiple of 3.
        _, digits, exponent = value.normalize().as_tuple()
        assert isinstance(exponent, int)
        shift = exponent % 3
        mantissa = int("".join(map(str, digits))) * 10**shift
        exponent -= shift
    if form == "exponent":
        return f"{mantissa}e{exponent}" if exponent else str(mantissa)
    suffixes = {e: s for s, e in _DECIMAL_EXPONENTS.items()}
    return f"{mantissa}{suffixes[exponent]}"


def _quantity_text(value: object) -> str:
    # YAML's `cpu: 2` is an integer; the schema admits it, as Kubernetes does.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if not isinstance(value, str) or len(value) > QUANTITY_MAX_LENGTH:
        raise ValueError("must be a quantity such as 500m, 2, 128Mi or 1Gi")
    parse_quantity(value)
    return value


def cel(rule: str, message: str, **extra: str) -> JsonDict:
    """One `x-kubernetes-validations` entry."""
    return {"rule": rule, "message": message, **extra}


Duration = Annotated[
    str,
    Field(
        pattern=DURATION,
        # With at most 6 digits a number, short enough that no spelling overflows CEL's
        # duration (about 2.5 million hours): its conversion error would name no field.
        max_length=16,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"duration(self) >= duration('{MIN_DURATION}')"
                    f" && duration(self) <= duration('{MAX_DURATION}')",
                    f"must be a duration between {MIN_DURATION} and {MAX_DURATION}",
                )
            ]
        },
    ),
    AfterValidator(_duration_in_range),
]


Quantity = Annotated[
    str,
    BeforeValidator(_quantity_text),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY,
            "maxLength": QUANTITY_MAX_LENGTH,
        }
    ),
]


def defaults_of(model: type[BaseModel]) -> dict[str, Any]:
    """A model's defaults as the CRD's `default`: CEL rules see the filled-in object."""
    return model().model_dump(by_alias=True, exclude_none=True, mode="json")


class _Model(BaseModel):
    """camelCase on the wire, unknown fields refused when a file is read offline."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )


class Provider(StrEnum):
    """The LLM provider behind a backend; it decides the wire format, auth header and URL."""

    OPENAI = "OpenAI"
    AZURE_OPENAI = "AzureOpenAI"
    ANTHROPIC = "Anthropic"
    AWS_BEDROCK = "AWSBedrock"
    GCP_VERTEX_AI = "GCPVertexAI"
    OPENAI_COMPATIBLE = "OpenAICompatible"


# Providers with one public endpoint get a default URL; the rest must name theirs.
DEFAULT_URLS: dict[str, str] = {
    Provider.OPENAI: "https://api.openai.com",
    Provider.ANTHROPIC: "https://api.anthropic.com",
}
# Where a backend's region applies; its URL follows from it (`regional_url`).
REGIONAL = [Provider.GCP_VERTEX_AI.value, Provider.AWS_BEDROCK.value]
PROVIDERS_NEEDING_URL = [p.value for p in Provider if p not in DEFAULT_URLS and p not in REGIONAL]
# A self-hosted OpenAI-compatible server may need no key. The hosted APIs always
# authenticate with a key; Vertex AI and Bedrock (with SigV4) with no credentialsRef use the
# gateway's workload identity.
PROVIDERS_NEEDING_KEY = [
    Provider.OPENAI.value,
    Provider.AZURE_OPENAI.value,
    Provider.ANTHROPIC.value,
    Provider.GCP_VERTEX_AI.value,
    Provider.AWS_BEDROCK.value,
]
CREDENTIALS_REF_MESSAGE = (
    "credentialsRef is required for providers "
    + ", ".join(PROVIDERS_NEEDING_KEY)
    + " (GCPVertexAI, and AWSBedrock with authentication SigV4, may leave it out for the "
    "gateway's workload identity)"
)
REGION_MESSAGE = "region is required for providers GCPVertexAI and AWSBedrock, and only valid there"
PROJECT_MESSAGE = "project is required for provider GCPVertexAI, and only valid there"
# A Bedrock model id (provider.model), a cross-region inference profile's (us., eu., apac.,
# global., ...), or an ARN (an inference profile, a provisioned or imported model).
# (`[.]`, not `\.`: the pattern goes into a CEL string, which has no such escape.)
BEDROCK_MODEL = (
    r"^(arn:aws[a-z-]*:bedrock:[a-z0-9-]+:[0-9]*:[a-z-]+/[A-Za-z0-9.:_/-]+"
    r"|([a-z]{2,7}[.])?[a-z0-9-]+[.][A-Za-z0-9.:@_-]+)$"
)
BEDROCK_MODEL_MESSAGE = (
    "model of an AWSBedrock backend is a Bedrock model id (anthropic.claude-sonnet-4-20250514-"
    "v1:0, meta.llama3-1-70b-instruct-v1:0), an inference profile (us.anthropic.claude-...) "
    "or an ARN"
)
# A Vertex AI model: Claude as Vertex names it, or publisher/model for the rest.
VERTEX_MODEL = r"^(claude-[^/]+|[a-z0-9-]+/[^/]+)$"
VERTEX_MODEL_MESSAGE = (
    "model of a GCPVertexAI backend is a Claude model as Vertex AI names it "
    "(claude-sonnet-4@20250514) or publisher/model (google/gemini-2.5-flash)"
)


def regional_url(provider: str, region: str) -> str:
    """The endpoint of Vertex AI (`global`: the global endpoint) or Bedrock in a region."""
    if provider == Provider.AWS_BEDROCK:
        return f"https://bedrock-runtime.{region}.amazonaws.com"
    if region == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{region}-aiplatform.googleapis.com"


LITELLM_MESSAGE = "dataPlane.type LiteLLM is not served yet: gateways run Envoy"


class Authentication(StrEnum):
    """How a backend proves who it is: what its credentialsRef holds."""

    API_KEY = "APIKey"  # the provider's key (for GCPVertexAI: a service-account key JSON)
    ENTRA_ID = "EntraID"  # AzureOpenAI: an Entra ID app, exchanged for access tokens
    SIG_V4 = "SigV4"  # AWSBedrock: an AWS shared-credentials file; requests signed with it


# Which provider takes each authentication other than APIKey.
AUTHENTICATED_BY = {
    Authentication.ENTRA_ID: Provider.AZURE_OPENAI,
    Authentication.SIG_V4: Provider.AWS_BEDROCK,
}
AUTHENTICATION_MESSAGE = (
    "authentication EntraID is only valid for provider AzureOpenAI, and SigV4 only for AWSBedrock"
)


class RetryOn(StrEnum):
    """A failure class that makes the data plane retry on another backend."""

    CONNECT_FAILURE = "ConnectFailure"
    SERVER_ERROR = "ServerError"
    RATE_LIMITED = "RateLimited"
    TIMEOUT = "Timeout"


class SecretKeyRef(_Model):
    """A key of a Secret in the referring object's own namespace."""

    name: str = Field(
        description="Name of the Secret, in the referring object's namespace.",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    key: str = Field(
        description="Key within the Secret's data whose value is the API key.",
        min_length=1,
        max_length=253,
        pattern=SECRET_KEY,
    )


PRICE = r"^[0-9]{1,9}(\.[0-9]{1,9})?$"


class Pricing(_Model):
    """What a backend's tokens cost, per million, for the cost metrics."""

    currency: str = Field(
        description="The prices' currency, an ISO 4217 code such as USD or EUR. Costs are "
        "summed per currency, never converted.",
        pattern=r"^[A-Z]{3}$",
    )
    input_per_million: str = Field(
        description="Price of a million input tokens not read from the prompt cache, as a "
        'decimal string ("2.50"). Anthropic cache writes count as input tokens.',
        pattern=PRICE,
        max_length=19,
    )
    output_per_million: str = Field(
        description="Price of a million output tokens, as a decimal string.",
        pattern=PRICE,
        max_length=19,
    )
    cached_input_per_million: str | None = Field(
        default=None,
        description="Price of a million input tokens read from the provider's prompt cache, "
        "as a decimal string; unset: inputPerMillion.",
        pattern=PRICE,
        max_length=19,
    )

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int) -> Decimal:
        """The price of one answer's tokens; `input_tokens` include the `cached_tokens`."""
        cached_price = Decimal(self.cached_input_per_million or self.input_per_million)
        spent = (
            (input_tokens - cached_tokens) * Decimal(self.input_per_million)
            + cached_tokens * cached_price
            + output_tokens * Decimal(self.output_per_million)
        )
        return spent / 1_000_000


class Backend(_Model):
    """One provider deployment that can serve the endpoint's model."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"has(self.region) == (self.provider in {REGIONAL})",
                    REGION_MESSAGE,
                    fieldPath=".region",
                    reason="FieldValueInvalid",
                ),
                cel(
                    "has(self.project) == (self.provider == 'GCPVertexAI')",
                    PROJECT_MESSAGE,
                    fieldPath=".project",
                    reason="FieldValueInvalid",
                ),
                cel(
                    f"self.provider != 'AWSBedrock' || self.model.matches('{BEDROCK_MODEL}')",
                    BEDROCK_MODEL_MESSAGE,
                    fieldPath=".model",
                    reason="FieldValueInvalid",
                ),
                cel(
                    f"self.provider != 'GCPVertexAI' || self.model.matches('{VERTEX_MODEL}')",
                    VERTEX_MODEL_MESSAGE,
                    fieldPath=".model",
                    reason="FieldValueInvalid",
                ),
                cel(
                    "!has(self.authentication) || self.authentication == 'APIKey'"
                    " || (self.authentication == 'EntraID' && self.provider == 'AzureOpenAI')"
                    " || (self.authentication == 'SigV4' && self.provider == 'AWSBedrock')",
                    AUTHENTICATION_MESSAGE,
                    fieldPath=".authentication",
                    reason="FieldValueForbidden",
                ),
                cel(
                    "!has(self.apiVersion) || self.provider == 'AzureOpenAI'",
                    "apiVersion is only valid for provider AzureOpenAI",
                    fieldPath=".apiVersion",
                    reason="FieldValueForbidden",
                ),
                cel(
                    f"has(self.url) || !(self.provider in {PROVIDERS_NEEDING_URL})",
                    "url is required for providers " + ", ".join(PROVIDERS_NEEDING_URL),
                    fieldPath=".url",
                    reason="FieldValueRequired",
                ),
                cel(
                    f"has(self.credentialsRef) || !(self.provider in {PROVIDERS_NEEDING_KEY})"
                    " || (self.provider == 'AWSBedrock' && self.authentication == 'SigV4')"
                    " || self.provider == 'GCPVertexAI'",
                    CREDENTIALS_REF_MESSAGE,
                    fieldPath=".credentialsRef",
                    reason="FieldValueRequired",
                ),
            ]
        }
    )

    name: str = Field(
        description="Backend name, unique within the endpoint. A DNS label: it appears in "
        "data-plane object names and metric labels.",
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
    )
    provider: Provider = Field(
        description="Provider type: OpenAI, AzureOpenAI, Anthropic, GCPVertexAI, AWSBedrock or "
        "OpenAICompatible (self-hosted servers such as vLLM)."
    )
    model: str = Field(
        description="Upstream model id sent to the provider. For AzureOpenAI, the deployment name.",
        min_length=1,
        max_length=253,
    )
    url: str | None = Field(
        default=None,
        description="Base URL of the provider, http or https. Required for AzureOpenAI, "
        "OpenAICompatible; OpenAI and Anthropic default to their public APIs, GCPVertexAI "
        "and AWSBedrock to their region's endpoint.",
        max_length=2048,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "isURL(self) && url(self).getScheme() in ['http', 'https']"
                    " && url(self).getHostname() != ''",
                    "url must be an http or https URL",
                ),
                cel(
                    "!isURL(self) || url(self).getPort() == ''"
                    " || (int(url(self).getPort()) >= 1 && int(url(self).getPort()) <= 65535)",
                    "url's port must be between 1 and 65535",
                ),
                # A user and password in the URL would be key material outside a Secret.
                cel(
                    "!self.matches('^[^:/?#]*://[^/?#]*@')",
                    "url must not carry credentials: put the key in credentialsRef",
                ),
            ]
        },
    )
    region: str | None = Field(
        default=None,
        description="GCPVertexAI and AWSBedrock: the region (us-east5, europe-west1, global; "
        "us-east-1) whose endpoint serves the model; the URL follows from it unless url is "
        "given.",
        pattern=r"^[a-z][a-z0-9-]*[a-z0-9]$",
        max_length=63,
    )
    project: str | None = Field(
        default=None,
        description="GCPVertexAI: the Google Cloud project id the requests are billed to.",
        pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$",
        max_length=30,
    )
    api_version: str | None = Field(
        default=None,
        description="Azure OpenAI api-version query parameter, such as 2024-10-21. "
        "AzureOpenAI only.",
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$",
        max_length=32,
    )
    authentication: Authentication = Field(
        default=Authentication.API_KEY,
        description="What credentialsRef holds: APIKey (the default), the provider's key; "
        'EntraID (AzureOpenAI only), an Entra ID app as JSON, {"tenantId", "clientId", '
        '"clientSecret"} (without clientSecret: the operator\'s own workload identity, '
        'its AZURE_FEDERATED_TOKEN_FILE), with an optional "authorityHost" for national '
        "clouds; the operator exchanges it for access tokens, and only those reach the data "
        "plane. SigV4 (AWSBedrock only), an AWS shared-credentials file ([default] with "
        "aws_access_key_id, aws_secret_access_key, optional aws_session_token) that signs "
        "each attempt; AWSBedrock with APIKey takes a Bedrock API key.",
    )
    credentials_ref: SecretKeyRef | None = Field(
        default=None,
        description="The Secret key holding this backend's API key; for GCPVertexAI, a "
        "service-account key JSON, which the operator exchanges for short-lived access "
        "tokens (only those reach the data plane). Required for OpenAI, AzureOpenAI, "
        "Anthropic, GCPVertexAI and AWSBedrock, except that a GCPVertexAI backend, and an "
        "AWSBedrock one with authentication SigV4, may leave it out: it then uses the "
        "workload identity of each gateway it is attached to, from the ServiceAccount its "
        "dataPlane.serviceAccountName names (AWS: the IAM role annotated on it, as IRSA, "
        "else its EKS Pod Identity association's; Google: the service account annotated on "
        "it, as GKE workload identity).",
    )
    weight: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Relative weight within the backend's priority tier: its share is "
        "weight / sum of the tier's weights. 0 keeps the backend configured but idle.",
    )
    priority: int = Field(
        default=0,
        ge=0,
        description="Priority tier. 0 is the primary tier; tier N+1 takes traffic only when "
        "tier N has no healthy backend.",
    )
    pricing: Pricing | None = Field(
        default=None,
        description="What this backend's tokens cost: it feeds switchyard_cost_total, per "
        "backend and per client. Unset: no cost is counted.",
    )

    @property
    def workload_identity(self) -> bool:
        """It uses the gateway's workload identity, having no credentials of its own."""
        return self.credentials_ref is None and (
            self.provider == Provider.GCP_VERTEX_AI
            or (
                self.provider == Provider.AWS_BEDROCK
                and self.authentication == Authentication.SIG_V4
            )
        )

    # The same rules as the CEL above, for files checked offline by `switchyard plan`.
    @model_validator(mode="after")
    def _provider_fields(self) -> Backend:
        if (self.region is not None) != (self.provider in REGIONAL):
            raise ValueError(REGION_MESSAGE)
        if (self.project is not None) != (self.provider == Provider.GCP_VERTEX_AI):
            raise ValueError(PROJECT_MESSAGE)
        if self.provider == Provider.AWS_BEDROCK and not re.fullmatch(BEDROCK_MODEL, self.model):
            raise ValueError(BEDROCK_MODEL_MESSAGE)
        if self.provider == Provider.GCP_VERTEX_AI and not re.fullmatch(VERTEX_MODEL, self.model):
            raise ValueError(VERTEX_MODEL_MESSAGE)
        if self.api_version is not None and self.provider != Provider.AZURE_OPENAI:
            raise ValueError("apiVersion is only valid for provider AzureOpenAI")
        if self.authentication != Authentication.API_KEY and (
            AUTHENTICATED_BY[self.authentication] != self.provider
        ):
            raise ValueError(AUTHENTICATION_MESSAGE)
        if self.url is None and self.provider in PROVIDERS_NEEDING_URL:
            raise ValueError(f"url is required for provider {self.provider}")
        needs_key = self.provider in PROVIDERS_NEEDING_KEY and not self.workload_identity
        if self.credentials_ref is None and needs_key:
            raise ValueError(CREDENTIALS_REF_MESSAGE)
        if self.url is not None and not (
            re.match(r"^https?://[^\s/]+", self.url, re.IGNORECASE)
            and urllib.parse.urlsplit(self.url).hostname
        ):
            raise ValueError("url must be an http or https URL")
        if self.url is not None:
            try:
                port = urllib.parse.urlsplit(self.url).port
            except ValueError:
                port = 0
            if port == 0:
                raise ValueError("url's port must be between 1 and 65535")
            if "@" in urllib.parse.urlsplit(self.url).netloc:
                raise ValueError("url must not carry credentials: put the key in credentialsRef")
        return self

    @property
    def base_url(self) -> str:
        if self.url is None and self.region is not None:
            return regional_url(self.provider, self.region)
        return (self.url or DEFAULT_URLS[self.provider]).rstrip("/")


class GatewayRef(_Model):
    """The ModelGateway an endpoint attaches to."""

    name: str = Field(
        description="Name of the ModelGateway.", min_length=1, max_length=253, pattern=DNS_SUBDOMAIN
    )
    namespace: str | None = Field(
        default=None,
        description="Namespace of the ModelGateway. Defaults to the endpoint's namespace.",
        max_length=63,
        pattern=DNS_LABEL,
    )


class HealthCheck(_Model):
    """Active probes the operator runs against every backend."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "duration(self.timeout) <= duration(self.interval)",
                    "timeout must not exceed interval",
                    fieldPath=".timeout",
                )
            ]
        }
    )

    interval: Duration = Field(default="15s", description="Time between two probes of a backend.")
    timeout: Duration = Field(default="5s", description="Time a probe may take before it fails.")
    unhealthy_threshold: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Consecutive failed probes that turn a healthy backend unhealthy.",
    )
    healthy_threshold: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Consecutive successful probes that turn an unhealthy backend healthy.",
    )

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> HealthCheck:
        if parse_duration(self.timeout) > parse_duration(self.interval):
            raise ValueError("timeout must not exceed interval")
        return self


class Retry(_Model):
    """How the data plane retries a failed request on another backend."""

    attempts: int = Field(
        default=2, ge=0, le=10, description="Retries after the first attempt; 0 disables them."
    )
    per_try_timeout: Duration = Field(
        default="30s", description="Time one attempt may take before it is retried."
    )
    retry_on: list[RetryOn] = Field(
        default_factory=lambda: [
            RetryOn.CONNECT_FAILURE,
            RetryOn.SERVER_ERROR,
            RetryOn.RATE_LIMITED,
        ],
        max_length=4,
        description="Failures that are retried: ConnectFailure, ServerError (5xx), "
        "RateLimited (429) and Timeout.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @model_validator(mode="after")
    def _retry_on_is_a_set(self) -> Retry:
        # The API server refuses duplicates in a list of type set; so does the operator,
        # for specs that reach it another way (`switchyard plan`, a cluster without it).
        seen = [str(r) for r in self.retry_on]
        if duplicates := sorted({r for r in seen if seen.count(r) > 1}):
            raise ValueError(f"retryOn: duplicate value {', '.join(duplicates)}")
        return self


class ModelEndpointSpec(_Model):
    """One public model name and the backends its traffic is split across."""

    gateway_ref: GatewayRef = Field(description="The ModelGateway that serves this endpoint.")
    model: str = Field(
        description="The model name clients send in the request body's `model` field. "
        "Unique per gateway: the oldest endpoint claiming a name keeps it.",
        min_length=1,
        max_length=253,
    )
    backends: list[Backend] = Field(
        min_length=1,
        max_length=16,
        description="The backends the traffic is split across, 1 to 16, names unique.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "x-kubernetes-validations": [
                cel(
                    "self.all(b, self.exists_one(c, c.name == b.name))",
                    "backend names must be unique",
                )
            ],
        },
    )
    health_check: HealthCheck = Field(
        default_factory=HealthCheck,
        description="Active health probes that drive failover.",
        json_schema_extra={"default": defaults_of(HealthCheck)},
    )
    retry: Retry = Field(
        default_factory=Retry,
        description="Retry policy of the data plane.",
        json_schema_extra={"default": defaults_of(Retry)},
    )
    allowed_clients: AllowedClients = Field(
        default_factory=lambda: AllowedClients(),
        description="Which namespaces' ModelClients may call this model. Defaults to the "
        "endpoint's own namespace. Ignored by a gateway whose clientAuth.mode is Disabled.",
        json_schema_extra={"default": {"namespaces": {"from": "Same"}}},
    )

    @model_validator(mode="after")
    def _unique_backend_names(self) -> ModelEndpointSpec:
        names = [b.name for b in self.backends]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"backend names must be unique: {', '.join(duplicates)}")
        return self


class Condition(_Model):
    """The Kubernetes condition shape (metav1.Condition)."""

    type: str = Field(description="Condition type, such as Accepted or Ready.", max_length=316)
    status: str = Field(description="True, False or Unknown.", max_length=16)
    reason: str = Field(description="CamelCase reason for the last transition.", max_length=1024)
    message: str = Field(default="", description="Human-readable detail.", max_length=32768)
    last_transition_time: str = Field(
        description="When the condition last changed status.",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was set from."
    )


ConditionList = Annotated[
    list[Condition],
    Field(
        default_factory=list,
        description="Current state, as Kubernetes conditions.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


class BackendStatus(_Model):
    """What the operator observes of one backend."""

    name: str = Field(description="Backend name.")
    healthy: bool = Field(
        description="Whether the backend passes its health probes. Backends are assumed "
        "healthy until probed."
    )
    effective_weight: int = Field(
        description="Weight the data plane uses now: the spec weight, or 0 while the backend "
        "is unhealthy or its credentials cannot be resolved."
    )
    consecutive_failures: int = Field(default=0, description="Failed probes in a row.")
    last_probe_time: str | None = Field(
        default=None,
        description="Time of the last probe.",
        json_schema_extra={"format": "date-time"},
    )
    last_probe_latency_ms: int | None = Field(
        default=None, description="Latency of the last probe, in milliseconds."
    )
    reason: str | None = Field(
        default=None, description="Why the effective weight is 0, when it is."
    )
    message: str | None = Field(
        default=None,
        description="What the last probe found, when it failed (HTTP 401: the key was "
        "refused; the token endpoint refused the service-account key (invalid_grant)).",
        max_length=1024,
    )
    rate_limited_until: str | None = Field(
        default=None,
        description="While the provider has asked to back off (HTTP 429): when its Retry-After "
        "ends and the backend takes traffic again.",
        json_schema_extra={"format": "date-time"},
    )


class ModelEndpointStatus(_Model):
    """Observed state of a ModelEndpoint."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status describes."
    )
    conditions: ConditionList
    split: str | None = Field(
        default=None,
        description="Share of traffic each backend carries now, such as "
        "'azure-eastus=70% claude=30%'.",
    )
    backends: list[BackendStatus] = Field(
        default_factory=list,
        description="Per-backend state.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class DataPlaneType(StrEnum):
    """The proxy that serves a gateway's traffic."""

    ENVOY = "Envoy"
    LITELLM = "LiteLLM"


RESOURCE_NAMES = ["cpu", "memory"]
# Envoy alone measured 73 MB serving a few endpoints (BENCHMARKS.md): a memory limit under
# this floor could never run it, and catches `memory: 512` meant as megabytes.
MIN_MEMORY_LIMIT = "64Mi"
# Defaults sized from BENCHMARKS.md, where the gateway's Envoy ran 2 workers: 73 MB serving a
# few endpoints, 85 MB at 100, 184 MB at 1,000, 582 MB at 5,000. The request covers a small
# gateway; the limit leaves the 5,000-endpoint figure room for response buffers and for the
# moment an xDS update holds the old configuration and the new. The CPU limit gives 2
# workers; the small CPU request reflects LLM traffic: few requests, each seconds long, and
# Envoy spends a fraction of a millisecond of CPU on each.
DEFAULT_RESOURCES: JsonDict = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"cpu": "2", "memory": "1Gi"},
}
# Workers when no CPU is given: the count every benchmark measured.
DEFAULT_CONCURRENCY = 2
# Envoy starts a worker per CPU: beyond this, one Pod is almost surely a unit slip (`cpu:
# 2000` meant as 2000m would start 2,000 workers). More replicas serve more traffic.
MAX_CPU = "64"
CPU_BOUND_MESSAGE = f"cpu above {MAX_CPU} is more than one Envoy Pod should run: add replicas"
# Beyond any node; and below the API server's own bound on a quantity, which CEL does not see.
MAX_MEMORY = "64Ti"
MEMORY_BOUND_MESSAGE = f"memory above {MAX_MEMORY} is more than any node has"
REQUESTS_WITHIN_LIMITS_MESSAGE = "requests must not exceed limits"


def _quantity_of(field: str) -> str:
    """CEL for the quantity at `field`, which may hold an integer or a string."""
    return f"quantity(string({field}))"


_RESOURCE_LIST_RULES = [
    cel(f"self.all(name, name in {RESOURCE_NAMES})", "only cpu and memory can be set"),
    cel(
        "!('cpu' in self) || "
        + _quantity_of("self['cpu']")
        + f".compareTo(quantity('{MAX_CPU}')) <= 0",
        CPU_BOUND_MESSAGE,
    ),
    cel(
        "!('memory' in self) || "
        + _quantity_of("self['memory']")
        + f".compareTo(quantity('{MAX_MEMORY}')) <= 0",
        MEMORY_BOUND_MESSAGE,
    ),
]
_LIMIT_RULES = [
    cel(
        "self.all(name, " + _quantity_of("self[name]") + ".isGreaterThan(quantity('0')))",
        "limits must be greater than zero",
    ),
    cel(
        "!('memory' in self) || "
        + _quantity_of("self['memory']")
        + f".compareTo(quantity('{MIN_MEMORY_LIMIT}')) >= 0",
        f"a memory limit below {MIN_MEMORY_LIMIT} cannot hold Envoy",
    ),
]


ResourceList = Annotated[
    dict[str, Quantity],
    Field(
        max_length=len(RESOURCE_NAMES),
        json_schema_extra={"x-kubernetes-validations": _RESOURCE_LIST_RULES},
    ),
]
LimitList = Annotated[
    dict[str, Quantity],
    Field(
        max_length=len(RESOURCE_NAMES),
        json_schema_extra={"x-kubernetes-validations": _RESOURCE_LIST_RULES + _LIMIT_RULES},
    ),
]


class ResourceRequirements(_Model):
    """CPU and memory of each data-plane Pod, in the shape of a container's resources."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.requests) || !has(self.limits) || self.requests.all(name, "
                    "!(name in self.limits) || "
                    + _quantity_of("self.requests[name]")
                    + ".compareTo("
                    + _quantity_of("self.limits[name]")
                    + ") <= 0)",
                    REQUESTS_WITHIN_LIMITS_MESSAGE,
                    fieldPath=".requests",
                )
            ]
        }
    )

    requests: ResourceList | None = Field(
        default=None,
        description="What the scheduler reserves for each Pod: cpu (such as 100m or 1, at "
        f"most {MAX_CPU}) and memory (such as 128Mi), as Kubernetes quantities; write a "
        "fraction of a CPU as 500m or '0.5'. A resource with a limit and no request is "
        "requested at its limit.",
    )
    limits: LimitList | None = Field(
        default=None,
        description=f"The most each Pod may use: cpu (throttled above it; at most {MAX_CPU}) "
        f"and memory (killed above it; at least {MIN_MEMORY_LIMIT}, at most {MAX_MEMORY}), as "
        "Kubernetes quantities. "
        "Each limit must be at least its request.",
    )

    # The same rules as the CEL above, for files checked offline by `switchyard plan`.
    @model_validator(mode="after")
    def _sensible(self) -> ResourceRequirements:
        requests, limits = self.requests or {}, self.limits or {}
        unknown = sorted((requests.keys() | limits.keys()) - set(RESOURCE_NAMES))
        if unknown:
            raise ValueError(f"only cpu and memory can be set, not {', '.join(unknown)}")
        if any(parse_quantity(q["cpu"]) > int(MAX_CPU) for q in (requests, limits) if "cpu" in q):
            raise ValueError(CPU_BOUND_MESSAGE)
        if any(
            parse_quantity(q["memory"]) > parse_quantity(MAX_MEMORY)
            for q in (requests, limits)
            if "memory" in q
        ):
            raise ValueError(MEMORY_BOUND_MESSAGE)
        if any(parse_quantity(limit) == 0 for limit in limits.values()):
            raise ValueError("limits must be greater than zero")
        if "memory" in limits and parse_quantity(limits["memory"]) < parse_quantity(
            MIN_MEMORY_LIMIT
        ):
            raise ValueError(f"a memory limit below {MIN_MEMORY_LIMIT} cannot hold Envoy")
        for name, request in requests.items():
            if name in limits and parse_quantity(request) > parse_quantity(limits[name]):
                raise ValueError(
                    f"{REQUESTS_WITHIN_LIMITS_MESSAGE}: requests.{name} {request} is above "
                    f"limits.{name} {limits[name]}"
                )
        return self

    @property
    def cpu(self) -> str | None:
        """The CPU Envoy's workers are sized by: the limit, else the request."""
        return (self.limits or {}).get("cpu") or (self.requests or {}).get("cpu")


class DataPlane(_Model):
    """The data plane that serves the gateway."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.type == 'Envoy'",
                    LITELLM_MESSAGE,
                    fieldPath=".type",
                    reason="FieldValueForbidden",
                )
            ]
        }
    )

    type: DataPlaneType = Field(
        default=DataPlaneType.ENVOY,
        description="Envoy (the default). LiteLLM is named by the API but not served yet, and "
        "refused.",
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=100,
        description="Data plane replicas. With more than one, they spread over nodes and "
        "zones where the cluster has them, and a node drain evicts one at a time; a single "
        "replica is evicted by a drain like any Pod, so the gateway pauses until it is "
        "rescheduled.",
    )
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements.model_validate(DEFAULT_RESOURCES),
        description="CPU and memory of each Envoy Pod, in the shape of a container's "
        "resources. Envoy runs one worker thread per CPU it may use: the CPU limit, else the "
        "CPU request, rounded up to a whole number, at least 1; with no CPU given, "
        f"{DEFAULT_CONCURRENCY}. (Left alone, Envoy starts a worker per core of the node, "
        "each with its own connections and copy of the routing state: memory for nothing on "
        "a large node.) The defaults come from measurement with 2 workers: requests cpu "
        "100m and memory 128Mi (Envoy used 73 MB serving a few endpoints, 85 MB at 100), "
        "limits cpu 2 (2 workers) and memory 1Gi (582 MB at 5,000 endpoints). Give more "
        "memory for more endpoints or workers. Set, this replaces the defaults whole: "
        "what it leaves out is not set.",
        json_schema_extra={"default": DEFAULT_RESOURCES},
    )

    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="The ServiceAccount, in the gateway's namespace, the Envoy Pods run as "
        "(default: the namespace's default one). It is the gateway's workload identity, for "
        "backends with no credentialsRef. AWSBedrock (authentication SigV4) signs with the "
        "temporary credentials of the IAM role its eks.amazonaws.com/role-arn annotation "
        "names, which the operator obtains for it (a ServiceAccount token for audience "
        "sts.amazonaws.com, exchanged with STS AssumeRoleWithWebIdentity, as IRSA does); "
        "with no role annotated, those of the role of its EKS Pod Identity association (a "
        "token for pods.eks.amazonaws.com, exchanged at the Pod Identity agent of the "
        "operator's node). "
        "GCPVertexAI sends access tokens of the Google service account its "
        "iam.gke.io/gcp-service-account annotation names, which the operator asks IAM for "
        "(generateAccessToken) as its own workload identity (the GKE metadata server). Both "
        "are renewed before they expire. The ServiceAccount is the platform team's to "
        "create and annotate; the operator does not create it.",
    )

    @model_validator(mode="after")
    def _served(self) -> DataPlane:
        if self.type != DataPlaneType.ENVOY:
            raise ValueError(LITELLM_MESSAGE)
        return self


class Listener(_Model):
    """Where the gateway accepts client requests."""

    port: int = Field(default=8080, ge=1, le=65535, description="TCP port clients connect to.")


class NamespacesFrom(StrEnum):
    """Which namespaces may attach endpoints."""

    SAME = "Same"
    ALL = "All"
    SELECTOR = "Selector"


class LabelSelectorRequirement(_Model):
    """One label selector requirement (metav1.LabelSelectorRequirement)."""

    key: str = Field(description="The label key the selector applies to.", max_length=317)
    operator: str = Field(
        description="In, NotIn, Exists or DoesNotExist.",
        json_schema_extra={"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
    )
    values: list[str] = Field(
        default_factory=list,
        description="Values for In and NotIn; empty for Exists and DoesNotExist.",
    )


class LabelSelector(_Model):
    """A label query over namespaces (metav1.LabelSelector)."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels a namespace must carry, all of them."
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list,
        description="Requirements a namespace's labels must meet, all of them.",
    )


class NamespacePolicy(_Model):
    """The namespaces whose endpoints the gateway admits."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.from == 'Selector' ? has(self.selector) : !has(self.selector)",
                    "selector is required when from is Selector, and only then",
                    fieldPath=".selector",
                )
            ]
        }
    )

    from_: NamespacesFrom = Field(
        default=NamespacesFrom.SAME,
        alias="from",
        description="Same: only the gateway's namespace. All: every namespace. Selector: "
        "namespaces whose labels match selector.",
    )
    selector: LabelSelector | None = Field(
        default=None, description="Namespace label selector, used when from is Selector."
    )


class AllowedEndpoints(_Model):
    """Which ModelEndpoints may attach to the gateway, like Gateway API's allowedRoutes."""

    namespaces: NamespacePolicy = Field(
        default_factory=NamespacePolicy,
        description="The namespaces whose endpoints may attach.",
        json_schema_extra={"default": defaults_of(NamespacePolicy)},
    )


class AllowedClients(_Model):
    """Which ModelClients may call an endpoint's model, by their namespace."""

    namespaces: NamespacePolicy = Field(
        default_factory=NamespacePolicy,
        description="The namespaces whose ModelClients may call the model.",
        json_schema_extra={"default": defaults_of(NamespacePolicy)},
    )


# Declared above the namespace policy it uses.
ModelEndpointSpec.model_rebuild()


def _loadable_certificates(bundle: str) -> str:
    """Refuse a bundle Envoy would refuse: every cluster trusting it would be rejected."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=bundle)
    except (ssl.SSLError, ValueError) as error:
        raise ValueError(f"caBundle holds no certificate that loads ({error})") from None
    return bundle


class BackendTLS(_Model):
    """Extra trust for backends with private certificates, such as an in-cluster vLLM."""

    ca_bundle: Annotated[str, AfterValidator(_loadable_certificates)] = Field(
        description="PEM CA certificates that sign the listed hosts' certificates. The API "
        "server cannot read certificates: one that does not load makes the gateway's spec "
        "invalid (Accepted=False, InvalidSpec), and its Envoys keep their last config.",
        min_length=1,
        max_length=262144,
    )
    hostnames: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        min_length=1,
        max_length=64,
        description="Backend hosts verified against caBundle instead of the system trust "
        "store: exact names, or *.suffix wildcards.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    def covers(self, host: str) -> bool:
        return hostname_matches(host, self.hostnames)


def hostname_matches(host: str, patterns: Iterable[str]) -> bool:
    """Whether `host` is one of `patterns`: exact names, or `*.suffix` for any name below
    suffix."""
    return any(
        host == name or (name.startswith("*.") and host.endswith(name[1:])) for name in patterns
    )


def _cidr(value: str) -> str:
    ipaddress.ip_network(value, strict=False)  # ValueError names what is wrong
    return value


class AllowedBackends(_Model):
    """Where the gateway may send traffic and provider keys."""

    hostnames: list[
        Annotated[str, Field(min_length=1, max_length=253, pattern=HOSTNAME_PATTERN)]
    ] = Field(
        default_factory=list,
        max_length=64,
        description="Backend URL hosts allowed: exact names, or *.suffix for any name below "
        "suffix.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    cidrs: list[
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=43,
                json_schema_extra={
                    "x-kubernetes-validations": [
                        cel("isCIDR(self)", "must be a CIDR such as 10.0.0.0/8 or fd00::/8")
                    ]
                },
            ),
            AfterValidator(_cidr),
        ]
    ] = Field(
        default_factory=list,
        max_length=64,
        description="Networks allowed for backend URLs whose host is an IP address.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class ClientAuthMode(StrEnum):
    """Whether the gateway serves only clients it can identify."""

    REQUIRED = "Required"
    DISABLED = "Disabled"


class ClientAuth(_Model):
    """How the gateway tells its clients apart."""

    mode: ClientAuthMode = Field(
        default=ClientAuthMode.REQUIRED,
        description="Required: a request is served only when its API key or ServiceAccount "
        "token identifies a ModelClient of this gateway that may call the model; otherwise "
        "401 (no or unknown credential) or 403 (model not allowed). Disabled: anyone who "
        "reaches the listener is served, and the gateway's status says so.",
    )


class ModelGatewaySpec(_Model):
    """A data plane that serves the ModelEndpoints attached to it."""

    data_plane: DataPlane = Field(
        default_factory=DataPlane,
        description="The proxy that serves traffic.",
        json_schema_extra={"default": defaults_of(DataPlane)},
    )
    listener: Listener = Field(
        default_factory=Listener,
        description="Where clients connect.",
        json_schema_extra={"default": defaults_of(Listener)},
    )
    allowed_endpoints: AllowedEndpoints = Field(
        default_factory=AllowedEndpoints,
        description="Which namespaces may attach ModelEndpoints. Defaults to the gateway's own.",
        json_schema_extra={"default": defaults_of(AllowedEndpoints)},
    )
    allowed_backends: AllowedBackends | None = Field(
        default=None,
        description="Pins where this gateway may send traffic and provider keys: a backend "
        "whose URL host matches none of hostnames (or, for an IP address, lies in none of "
        "cidrs) carries no traffic, is not probed, gets no key, and is reported on its "
        "endpoint (ResolvedRefs=False, BackendNotAllowed). Absent: any host. Cloud metadata "
        "addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254, 100.100.100.200, "
        "metadata.google.internal) and the Kubernetes API server are never backends.",
    )
    client_auth: ClientAuth = Field(
        default_factory=ClientAuth,
        description="Who may call the gateway. Defaults to Required: only identified ModelClients.",
        json_schema_extra={"default": defaults_of(ClientAuth)},
    )
    backend_tls: BackendTLS | None = Field(
        default=None,
        alias="backendTLS",
        description="A CA bundle for https backends whose certificates the system trust store "
        "does not cover. Other https backends are verified against the system trust store.",
    )


class ModelGatewayStatus(_Model):
    """Observed state of a ModelGateway."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status describes."
    )
    conditions: ConditionList
    attached_endpoints: int = Field(
        default=0, description="ModelEndpoints attached to and served by this gateway."
    )


def spec_of(model: type[_Model], body: dict[str, Any]) -> Any:
    """Validate the `spec` of an object body read from the API server or a file."""
    return model.model_validate(body.get("spec") or {})


class ClientLimits(_Model):
    """Per-client rate limits, held across every Envoy of the client's gateway: the gateway's
    Envoys share one count per client in the rate limit service (fixed one-minute windows)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.requestsPerMinute) || has(self.tokensPerMinute)",
                    "limits needs requestsPerMinute, tokensPerMinute, or both",
                )
            ]
        }
    )

    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=10**9,
        description="Requests per minute the client may send; past it, 429 until the minute "
        "is over.",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=2**32 - 1,  # the rate limit protocol counts in 32 bits
        description="Tokens per minute its answers may use, input (cached included) and "
        "output, as the providers report them. A request is refused once the minute's tokens "
        "are spent; one admitted is served whole, so the answers in flight at that moment "
        "may end the minute above the limit.",
    )

    @model_validator(mode="after")
    def _some(self) -> ClientLimits:
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            raise ValueError("limits needs requestsPerMinute, tokensPerMinute, or both")
        return self


class ModelClientSpec(_Model):
    """One calling application of a gateway, and how it proves who it is."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.apiKeyRef) || (has(self.serviceAccounts) && "
                    "size(self.serviceAccounts) > 0)",
                    "a client needs apiKeyRef, serviceAccounts, or both",
                ),
            ]
        }
    )

    gateway_ref: GatewayRef = Field(
        description="The ModelGateway this client calls. namespace defaults to the client's."
    )
    api_key_ref: SecretKeyRef | None = Field(
        default=None,
        description="A key of a Secret in the client's namespace whose value is the API key "
        "the client sends, as `Authorization: Bearer <key>`, `x-api-key: <key>` or "
        "`api-key: <key>` (the OpenAI, Anthropic and Azure SDKs' habits). The gateway "
        "compares SHA-256 digests: the key itself never leaves Secrets. Rotating the "
        "Secret's value takes effect within seconds, without a restart.",
    )
    service_accounts: list[
        Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
    ] = Field(
        default_factory=list,
        max_length=32,
        description="ServiceAccounts of the client's namespace whose projected tokens "
        "(audience `switchyard`, sent as `Authorization: Bearer <token>`) identify the "
        "client. The gateway verifies them against the cluster's service-account issuer "
        "keys: no key to hand out.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    models: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list,
        max_length=256,
        description="The models this client may call, narrowing what the endpoints' "
        "allowedClients admit. Empty: every model whose endpoint admits the client's namespace.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    limits: ClientLimits | None = Field(
        default=None,
        description="Requests and tokens per minute, for this client across every Envoy of "
        "its gateway. Past a limit the gateway answers 429 with Retry-After and the "
        "rate-limit headers of the API the client spoke. Needs the operator's rate limit "
        "service (the chart's rateLimits.enabled, on by default): without it, a client with "
        "limits is not accepted.",
    )

    @model_validator(mode="after")
    def _identified(self) -> ModelClientSpec:
        if self.api_key_ref is None and not self.service_accounts:
            raise ValueError("a client needs apiKeyRef, serviceAccounts, or both")
        return self


class ClientUse(_Model):
    """What a limited client has used of the current minute, across every Envoy."""

    start: str = Field(description="When the minute began (RFC 3339).")
    requests: int | None = Field(
        default=None,
        description="Requests in the minute, those refused past the limit included (with "
        "spec.limits.requestsPerMinute).",
    )
    tokens: int | None = Field(
        default=None,
        description="Tokens of the minute's answers (with spec.limits.tokensPerMinute).",
    )


class ModelClientStatus(_Model):
    """Observed state of a ModelClient."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status describes."
    )
    conditions: ConditionList
    models: list[str] = Field(
        default_factory=list, description="The models the client may call now, sorted."
    )
    current_minute: ClientUse | None = Field(
        default=None,
        description="With spec.limits: its use of the current minute, as the rate limit "
        "service counts it, refreshed every 15 s or so while the client is limited.",
    )
