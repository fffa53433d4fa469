"""Pydantic models of the two custom resources: the single source of truth for `crds/`.

Every field carries a description (it becomes `kubectl explain` text) and every cross-field
rule is a CEL expression, so the API server refuses bad input at `kubectl apply` time.
"""

from __future__ import annotations

import re
import urllib.parse
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

JsonDict = dict[str, Any]

GROUP = "switchyard.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration written like `500ms`, `15s`, `1m30s` (the CRD's own syntax)."""
    if not re.fullmatch(DURATION, text):
        raise ValueError(f"{text!r} is not a duration such as 500ms, 15s or 1m")
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def _positive_duration(value: str) -> str:
    if parse_duration(value) <= 0:
        raise ValueError(f"duration {value!r} must be positive")
    return value


def cel(rule: str, message: str, **extra: str) -> JsonDict:
    """One `x-kubernetes-validations` entry."""
    return {"rule": rule, "message": message, **extra}


Duration = Annotated[
    str,
    Field(
        pattern=DURATION,
        max_length=32,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("duration(self) > duration('0s')", "must be a positive duration")
            ]
        },
    ),
    AfterValidator(_positive_duration),
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
PROVIDERS_NEEDING_URL = [p.value for p in Provider if p.value not in DEFAULT_URLS]
# A self-hosted OpenAI-compatible server may need no key; Bedrock and Vertex AI may use
# workload identity. The hosted APIs always authenticate with a key.
PROVIDERS_NEEDING_KEY = [
    Provider.OPENAI.value,
    Provider.AZURE_OPENAI.value,
    Provider.ANTHROPIC.value,
]
# Named by the API, not served yet: refused at admission rather than accepted and ignored.
NOT_YET_SERVED = [Provider.AWS_BEDROCK.value, Provider.GCP_VERTEX_AI.value]
NOT_YET_SERVED_MESSAGE = (
    "providers AWSBedrock and GCPVertexAI are not served yet: Bedrock needs SigV4-signed "
    "requests and Vertex AI OAuth tokens, which Switchyard does not send yet"
)
LITELLM_MESSAGE = "dataPlane.type LiteLLM is not served yet: gateways run Envoy"


class RetryOn(StrEnum):
    """A failure class that makes the data plane retry on another backend."""

    CONNECT_FAILURE = "ConnectFailure"
    SERVER_ERROR = "ServerError"
    RATE_LIMITED = "RateLimited"
    TIMEOUT = "Timeout"


class SecretKeyRef(_Model):
    """A key of a Secret in the ModelEndpoint's own namespace."""

    name: str = Field(
        description="Name of the Secret, in the ModelEndpoint's namespace.",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    key: str = Field(
        description="Key within the Secret's data whose value is the provider API key.",
        min_length=1,
        max_length=253,
        pattern=SECRET_KEY,
    )


class Backend(_Model):
    """One provider deployment that can serve the endpoint's model."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"!(self.provider in {NOT_YET_SERVED})",
                    NOT_YET_SERVED_MESSAGE,
                    fieldPath=".provider",
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
                    f"has(self.credentialsRef) || !(self.provider in {PROVIDERS_NEEDING_KEY})",
                    "credentialsRef is required for providers " + ", ".join(PROVIDERS_NEEDING_KEY),
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
        description="Provider type: OpenAI, AzureOpenAI, Anthropic or OpenAICompatible "
        "(self-hosted servers such as vLLM). AWSBedrock and GCPVertexAI are named by the API "
        "but not served yet, and refused."
    )
    model: str = Field(
        description="Upstream model id sent to the provider. For AzureOpenAI, the deployment name.",
        min_length=1,
        max_length=253,
    )
    url: str | None = Field(
        default=None,
        description="Base URL of the provider, http or https. Required for AzureOpenAI, "
        "AWSBedrock, GCPVertexAI and OpenAICompatible; OpenAI and Anthropic default to their "
        "public APIs.",
        max_length=2048,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "isURL(self) && url(self).getScheme() in ['http', 'https']",
                    "url must be an http or https URL",
                ),
                cel(
                    "!isURL(self) || url(self).getPort() == ''"
                    " || (int(url(self).getPort()) >= 1 && int(url(self).getPort()) <= 65535)",
                    "url's port must be between 1 and 65535",
                ),
            ]
        },
    )
    api_version: str | None = Field(
        default=None,
        description="Azure OpenAI api-version query parameter, such as 2024-10-21. "
        "AzureOpenAI only.",
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$",
        max_length=32,
    )
    credentials_ref: SecretKeyRef | None = Field(
        default=None,
        description="The Secret key holding this backend's API key. Required for OpenAI, "
        "AzureOpenAI and Anthropic.",
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

    # The same rules as the CEL above, for files checked offline by `switchyard plan`.
    @model_validator(mode="after")
    def _provider_fields(self) -> Backend:
        if self.provider in NOT_YET_SERVED:
            raise ValueError(NOT_YET_SERVED_MESSAGE)
        if self.api_version is not None and self.provider != Provider.AZURE_OPENAI:
            raise ValueError("apiVersion is only valid for provider AzureOpenAI")
        if self.url is None and self.provider in PROVIDERS_NEEDING_URL:
            raise ValueError(f"url is required for provider {self.provider}")
        if self.credentials_ref is None and self.provider in PROVIDERS_NEEDING_KEY:
            raise ValueError(f"credentialsRef is required for provider {self.provider}")
        if self.url is not None and not re.match(r"^https?://[^\s/]+", self.url):
            raise ValueError("url must be an http or https URL")
        if self.url is not None:
            try:
                port = urllib.parse.urlsplit(self.url).port
            except ValueError:
                port = 0
            if port == 0:
                raise ValueError("url's port must be between 1 and 65535")
        return self

    @property
    def base_url(self) -> str:
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
    replicas: int = Field(default=1, ge=0, le=100, description="Data plane replicas.")

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


class BackendTLS(_Model):
    """Extra trust for backends with private certificates, such as an in-cluster vLLM."""

    ca_bundle: str = Field(
        description="PEM CA certificates that sign the listed hosts' certificates.",
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
        return any(
            host == name or (name.startswith("*.") and host.endswith(name[1:]))
            for name in self.hostnames
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
