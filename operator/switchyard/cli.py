"""The `switchyard` command: run the operator, dry-run a plan, write the CRDs."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from switchyard.api.crd import custom_resource_definitions
from switchyard.api.models import API_VERSION, ModelEndpointSpec
from switchyard.plan.routing import EndpointPlan, plan_endpoint, zero_weight_tiers

if TYPE_CHECKING:
    import ssl

    from switchyard.fakes.bedrock import AwsCredentials

CRD_HEADER = "# Generated from the pydantic models by `switchyard crds`. Do not edit.\n"


def write_crds(output: Path) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, crd in custom_resource_definitions().items():
        path = output / filename
        path.write_text(CRD_HEADER + yaml.safe_dump(crd, sort_keys=False, width=100))
        written.append(path)
    return written


def _documents(paths: Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in paths:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        for index, document in enumerate(yaml.safe_load_all(text)):
            if isinstance(document, dict):
                yield f"{path}#{index}", document


def _format_plan(plan: EndpointPlan, gateway: str) -> str:
    rows = [("PRIORITY", "BACKEND", "PROVIDER", "UPSTREAM MODEL", "WEIGHT", "SHARE")]
    for b in plan.backends:
        share = f"{b.share * 100:.1f}%" if b.share > 0 else ("standby" if b.weight else "idle")
        rows.append((str(b.priority), b.name, b.provider, b.upstream_model, str(b.weight), share))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{plan.namespace}/{plan.name}: model {plan.model!r} on gateway {gateway}"]
    lines += [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.append(f"  split: {plan.split}")
    return "\n".join(lines)


def plan_command(files: Sequence[str], output: str) -> int:
    """Print the routing plan of every ModelEndpoint in the files; no cluster needed."""
    failed = False
    plans: list[tuple[EndpointPlan, str]] = []
    for where, document in _documents(files):
        if document.get("kind") != "ModelEndpoint":
            continue
        metadata = document.get("metadata") or {}
        namespace = metadata.get("namespace", "default")
        name = metadata.get("name", "<unnamed>")
        label = f"ModelEndpoint {namespace}/{name} ({where})"
        if document.get("apiVersion") != API_VERSION:
            print(f"error: {label}: apiVersion must be {API_VERSION}", file=sys.stderr)
            failed = True
            continue
        try:
            spec = ModelEndpointSpec.model_validate(document.get("spec") or {})
        except ValidationError as error:
            for problem in error.errors():
                field = ".".join(["spec", *(str(p) for p in problem["loc"])])
                print(f"error: {label}: {field}: {problem['msg']}", file=sys.stderr)
            failed = True
            continue
        empty = zero_weight_tiers(spec)
        if empty:
            print(
                f"error: {label}: spec.backends[].weight: every weight is 0 in priority tier "
                + ", ".join(map(str, empty)),
                file=sys.stderr,
            )
            failed = True
            continue
        gateway = f"{spec.gateway_ref.namespace or namespace}/{spec.gateway_ref.name}"
        plans.append((plan_endpoint(namespace, name, spec), gateway))
    if output == "json":
        print(json.dumps([_plan_json(p, g) for p, g in plans], indent=2))
    else:
        print("\n\n".join(_format_plan(p, g) for p, g in plans))
    if not plans and not failed:
        print("no ModelEndpoint found in the files", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _plan_json(plan: EndpointPlan, gateway: str) -> dict[str, Any]:
    return {
        "endpoint": f"{plan.namespace}/{plan.name}",
        "gateway": gateway,
        "model": plan.model,
        "split": plan.split,
        "backends": [
            {"name": b.name, "priority": b.priority, "weight": b.weight, "share": round(b.share, 6)}
            for b in plan.backends
        ],
    }


def run_command(
    namespaces: Sequence[str],
    xds_address: str | None,
    xds_service: str | None,
    envoy_image: str | None,
    resync_seconds: float | None,
    leader_elect: bool,
    metrics_address: str | None,
    verbose: bool,
    debug: bool,
    ca_secret: str | None = None,
    cert_lifetime: float | None = None,
    ca_lifetime: float | None = None,
    gateway_network_policy: bool = False,
    pod_labels: str | None = None,
    rate_limit_service: str | None = None,
    rate_limit_redis: str | None = None,
) -> int:
    import kopf

    import switchyard.handlers.operator  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=verbose, debug=debug)
    # Standalone: no Kopf peering. Replicas coordinate through a Lease (--leader-elect).
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        memo=kopf.Memo(
            namespaces=tuple(namespaces),
            xds_address=xds_address,
            xds_service=xds_service,
            envoy_image=envoy_image,
            resync_seconds=resync_seconds,
            leader_elect=leader_elect,
            metrics_address=metrics_address,
            ca_secret=ca_secret,
            cert_lifetime=cert_lifetime,
            ca_lifetime=ca_lifetime,
            gateway_network_policy=gateway_network_policy,
            pod_labels=pod_labels,
            rate_limit_service=rate_limit_service,
            rate_limit_redis=rate_limit_redis,
        ),
    )
    return 0


# The fake-provider flags that only GCPVertexAI takes, as argparse names them (but
# --token-lifetime, which AzureOpenAI with Entra ID takes too).
VERTEX_ONLY_FLAGS = {
    "project": "--project",
    "location": "--location",
    "service_account_key": "--service-account-key",
    "token_lifetime": "--token-lifetime",
    "auth_port": "--auth-port",
    "auth_control_port": "--auth-control-port",
    "metadata_account": "--metadata-account",
    "token_creator": "--token-creator",
}
# The flags that run AzureOpenAI with Entra ID, and those of them it cannot do without.
ENTRA_FLAGS = {
    "entra_tenant": "--entra-tenant",
    "entra_client_id": "--entra-client-id",
    "entra_client_secret": "--entra-client-secret",
    "entra_port": "--entra-port",
    "entra_tls_cert": "--entra-tls-cert",
    "entra_tls_key": "--entra-tls-key",
    "entra_control_port": "--entra-control-port",
}
# The flags only AWSBedrock takes.
BEDROCK_ONLY_FLAGS = {
    "region": "--region",
    "aws_credentials": "--aws-credentials",
    "bedrock_api_key": "--bedrock-api-key",
}
ENTRA_REQUIRED = (
    "entra_tenant",
    "entra_client_id",
    "entra_client_secret",
    "entra_tls_cert",
    "entra_tls_key",
)


def _given(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    return [flag for name, flag in flags.items() if getattr(args, name) not in (None, [])]


def fake_provider_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the fake-provider flags for the chosen provider, if anything: the
    flags each provider needs differ, which argparse's `required` cannot say."""
    entra = _given(args, ENTRA_FLAGS)
    if entra and args.provider != "AzureOpenAI":
        return f"{', '.join(entra)}: only for AzureOpenAI"
    bedrock = _given(args, BEDROCK_ONLY_FLAGS)
    if bedrock and args.provider != "AWSBedrock":
        return f"{', '.join(bedrock)}: only for AWSBedrock"
    if args.provider == "AWSBedrock":
        if args.api_key is not None:
            return (
                "--api-key: AWSBedrock takes SigV4 signatures (--aws-credentials) or Bedrock "
                "API keys (--bedrock-api-key)"
            )
        if not args.region:
            return "--region is required for AWSBedrock"
        if not args.aws_credentials and not args.bedrock_api_key:
            return "--aws-credentials or --bedrock-api-key is required for AWSBedrock"
        given = _given(args, VERTEX_ONLY_FLAGS)
        return f"{', '.join(given)}: only for GCPVertexAI" if given else None
    if args.provider == "GCPVertexAI":
        if args.api_key is not None:
            return "--api-key: GCPVertexAI takes tokens from its token endpoint, not a key"
        if not args.project:
            return "--project is required for GCPVertexAI"
        if not args.service_account_key:
            return "--service-account-key is required for GCPVertexAI"
        return None
    if entra:
        if args.api_key is not None:
            return "--api-key: AzureOpenAI with Entra ID takes tokens from its Entra, not a key"
        missing = [ENTRA_FLAGS[name] for name in ENTRA_REQUIRED if getattr(args, name) is None]
        if missing:
            return f"{', '.join(missing)}: required for AzureOpenAI with Entra ID"
        # --token-lifetime is Entra's too.
        given = [flag for flag in _given(args, VERTEX_ONLY_FLAGS) if flag != "--token-lifetime"]
    else:
        if args.api_key is None:
            return f"--api-key is required for {args.provider}"
        given = _given(args, VERTEX_ONLY_FLAGS)
    if given:
        return f"{', '.join(given)}: only for GCPVertexAI"
    return None


def fake_provider_command(args: argparse.Namespace) -> int:
    import asyncio
    import ssl

    from switchyard.fakes.provider import FakeProvider, serve_forever

    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    if args.provider == "GCPVertexAI":
        return _fake_vertex(args, context)
    if args.entra_tenant is not None:
        return _fake_azure_entra(args, context)
    if args.provider == "AWSBedrock":
        return _fake_bedrock(args, context)
    provider = FakeProvider(
        args.provider,
        args.api_key,
        models=args.model or None,
        host=args.host,
        port=args.port,
        stream_chunk_delay=args.stream_chunk_delay,
        ssl_context=context,
        keep_requests=args.keep_requests,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(provider, args.control_port))
    return 0


def _fake_vertex(args: argparse.Namespace, context: ssl.SSLContext | None) -> int:
    """FakeGoogleAuth and a FakeVertex that takes its tokens, in one loop."""
    import asyncio

    from switchyard.fakes.vertex import FakeGoogleAuth, FakeVertex, serve_vertex_forever

    try:
        keys = [json.loads(Path(path).read_text()) for path in args.service_account_key]
        creators: dict[str, list[str]] = {}
        for pair in args.token_creator:
            target, caller = pair.split("=", 1)
            creators.setdefault(target, []).append(caller)
        auth = FakeGoogleAuth(
            keys,
            metadata_account=args.metadata_account,
            token_creators=creators,
            token_lifetime=args.token_lifetime if args.token_lifetime is not None else 3599,
            host=args.host,
            port=args.auth_port or 0,
            keep_requests=args.keep_requests,
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        # A key that cannot be read or is not a service account's: say so, not a traceback.
        print(f"error: --service-account-key: {error!r}", file=sys.stderr)
        return 2
    models: dict[str, Any] = {}
    if args.model:  # else FakeVertex's own defaults
        models["claude_models"] = [m for m in args.model if not m.startswith("google/")]
        models["gemini_models"] = [
            m.removeprefix("google/") for m in args.model if m.startswith("google/")
        ]

    vertex = FakeVertex(
        auth,
        args.project,
        args.location or ["us-east5"],
        **models,
        host=args.host,
        port=args.port,
        stream_chunk_delay=args.stream_chunk_delay,
        ssl_context=context,
        keep_requests=args.keep_requests,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_vertex_forever(auth, vertex, args.control_port, args.auth_control_port))
    return 0


def _aws_credentials(path: str) -> AwsCredentials:
    """The `[default]` profile of an AWS shared-credentials file."""
    import configparser

    from switchyard.fakes.bedrock import AwsCredentials

    parser = configparser.ConfigParser(interpolation=None)
    with Path(path).open() as file:
        parser.read_file(file)
    profile = parser["default"]
    return AwsCredentials(
        profile["aws_access_key_id"].strip(),
        profile["aws_secret_access_key"].strip(),
        (profile.get("aws_session_token") or "").strip() or None,
    )


def _fake_bedrock(args: argparse.Namespace, context: ssl.SSLContext | None) -> int:
    """A FakeBedrock taking the keys of the credentials files and the Bedrock API keys."""
    import asyncio
    import configparser

    from switchyard.fakes.bedrock import FakeBedrock
    from switchyard.fakes.provider import serve_forever

    try:
        credentials = [_aws_credentials(path) for path in args.aws_credentials]
    except (OSError, KeyError, configparser.Error) as error:
        # A file that cannot be read or has no [default] keys: say so, not a traceback.
        print(f"error: --aws-credentials: {error!r}", file=sys.stderr)
        return 2
    bedrock = FakeBedrock(
        credentials,
        api_keys=args.bedrock_api_key,
        models=args.model or None,
        region=args.region,
        host=args.host,
        port=args.port,
        stream_chunk_delay=args.stream_chunk_delay,
        ssl_context=context,
        keep_requests=args.keep_requests,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(bedrock, args.control_port))
    return 0


def _fake_azure_entra(args: argparse.Namespace, context: ssl.SSLContext | None) -> int:
    """FakeEntra and an Azure OpenAI fake that takes its tokens, in one loop."""
    import asyncio
    import ssl

    from switchyard.fakes.entra import FakeEntra, serve_azure_entra_forever
    from switchyard.fakes.provider import FakeProvider

    # https only: azure-identity refuses an http authority.
    entra_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        entra_context.load_cert_chain(args.entra_tls_cert, args.entra_tls_key)
    except (OSError, ssl.SSLError) as error:
        # A certificate that cannot be read: say so, not a traceback.
        print(f"error: --entra-tls-cert/--entra-tls-key: {error!r}", file=sys.stderr)
        return 2
    entra = FakeEntra(
        args.entra_tenant,
        args.entra_client_id,
        args.entra_client_secret,
        ssl_context=entra_context,
        token_lifetime=args.token_lifetime if args.token_lifetime is not None else 3599,
        host=args.host,
        port=args.entra_port or 0,
        keep_requests=args.keep_requests,
    )
    azure = FakeProvider(
        "AzureOpenAI",
        "",  # no key: it takes only the Entra's tokens
        models=args.model or None,
        host=args.host,
        port=args.port,
        stream_chunk_delay=args.stream_chunk_delay,
        ssl_context=context,
        keep_requests=args.keep_requests,
        entra=entra,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve_azure_entra_forever(entra, azure, args.control_port, args.entra_control_port)
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="switchyard",
        description="Split one model name's traffic across LLM providers, on Kubernetes.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator against the current cluster")
    run.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    run.add_argument(
        "--xds-address",
        default=None,
        help="where the xDS server for the gateways' Envoys listens (default 0.0.0.0:18000)",
    )
    run.add_argument(
        "--xds-service",
        default=None,
        help="where gateway Pods reach that server "
        "(default switchyard.switchyard-system.svc:18000, the Helm chart's Service)",
    )
    run.add_argument(
        "--envoy-image",
        default=None,
        help="the image of the gateways' Envoy Pods (default envoyproxy/envoy:v1.40.0)",
    )
    run.add_argument(
        "--resync-period",
        type=float,
        default=None,
        metavar="SECONDS",
        help="relist everything this often, repairing what a watch gap missed (default 300)",
    )
    run.add_argument(
        "--leader-elect",
        action="store_true",
        help="run beside other replicas: only the holder of the leader Lease (in POD_NAMESPACE, "
        "as POD_NAME) writes to the API server and serves xDS",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port of /metrics (Prometheus) and /healthz (liveness); default 8000",
    )
    run.add_argument(
        "--ca-secret",
        default=None,
        metavar="NAMESPACE/NAME",
        help="the Secret of the control channel's CA, shared by every replica "
        "(default switchyard-ca in POD_NAMESPACE, else in switchyard-system)",
    )
    run.add_argument(
        "--cert-lifetime",
        type=float,
        default=None,
        metavar="SECONDS",
        help="lifetime of the xDS certificates of the operator and of each gateway, renewed "
        "at half-life (default 86400)",
    )
    run.add_argument(
        "--ca-lifetime",
        type=float,
        default=None,
        metavar="SECONDS",
        help="lifetime of the control channel's CA, rotated at half-life; at least 4 times "
        "--cert-lifetime (default 31536000)",
    )
    run.add_argument(
        "--gateway-network-policy",
        action="store_true",
        help="give each gateway's Envoy Pods a NetworkPolicy: ingress to the listener, egress "
        "to DNS, xDS and the backends' networks, never to cloud metadata addresses",
    )
    run.add_argument(
        "--pod-labels",
        default=None,
        metavar="K=V,...",
        help="labels of this operator's Pods (in POD_NAMESPACE), which the gateways' "
        "NetworkPolicy lets Envoy reach for xDS (default: any address on the xDS port)",
    )
    run.add_argument(
        "--rate-limit-service",
        default=None,
        metavar="HOST:PORT",
        help="the gRPC address of the rate limit service (envoyproxy/ratelimit) that holds "
        "ModelClients' limits across every Envoy; the Helm chart deploys one. Without it, a "
        "ModelClient with spec.limits is not accepted",
    )
    run.add_argument(
        "--rate-limit-redis",
        default=None,
        metavar="HOST:PORT",
        help="the rate limit service's Redis, read (every 15 s) for each limited "
        "ModelClient's use of the current minute in its status",
    )
    run.add_argument("--verbose", action="store_true", help="log more")
    run.add_argument("--debug", action="store_true", help="log everything Kopf does")

    plan = commands.add_parser("plan", help="print routing plans of ModelEndpoint files, offline")
    plan.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        help="YAML file with ModelEndpoints ('-' for stdin); repeatable",
    )
    plan.add_argument("-o", "--output", choices=["table", "json"], default="table")

    envoy = commands.add_parser(
        "envoy", help="run the real Envoy locally for a gateway, fed by a running operator"
    )
    envoy.add_argument("--gateway", required=True, help="NAMESPACE/NAME of the ModelGateway")
    envoy.add_argument("--port", type=int, help="listen here (default: the gateway's port)")
    envoy.add_argument(
        "--xds-address",
        default="127.0.0.1:18000",
        help="the operator's xDS server (default 127.0.0.1:18000)",
    )
    envoy.add_argument("--admin-port", type=int, default=0, help="Envoy admin (default: any)")
    envoy.add_argument("--log-level", default="warning")
    envoy.add_argument(
        "--secret-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="apply a credentials change this long after it is seen, as a kubelet lags (default 0)",
    )

    fake = commands.add_parser(
        "fake-provider",
        help="serve a fake LLM provider API on loopback, for tests and demos",
        description="Serve a fake LLM provider API. GCPVertexAI runs Vertex AI and the Google "
        "OAuth token endpoint its tokens come from (on --auth-port), in one process; clients "
        "get tokens there with a --service-account-key whose token_uri is "
        "http://HOST:AUTH_PORT/token. AzureOpenAI with --entra-tenant runs Azure OpenAI taking "
        "only Entra ID tokens (an api-key header is refused 403, as with local auth disabled) "
        "and the Entra ID token endpoint they come from (https on --entra-port), in one "
        "process; clients get tokens with the client secret at the authority "
        "https://NAME:ENTRA_PORT, NAME one the --entra-tls-cert carries. AWSBedrock runs the "
        "Bedrock runtime in --region, taking SigV4 signatures by the [default] keys of "
        "--aws-credentials files and the --bedrock-api-key keys (Authorization: Bearer).",
    )
    fake.add_argument(
        "--provider",
        required=True,
        choices=[
            "OpenAI",
            "AzureOpenAI",
            "Anthropic",
            "OpenAICompatible",
            "GCPVertexAI",
            "AWSBedrock",
        ],
    )
    fake.add_argument("--port", type=int, required=True)
    fake.add_argument(
        "--api-key",
        help="the key clients must send (required, except for GCPVertexAI and AWSBedrock)",
    )
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument(
        "--model",
        action="append",
        default=[],
        help="a model (Azure: deployment) it serves; repeatable. GCPVertexAI: a Claude id as "
        "in the URL (claude-x@20250101) or google/<id> for Gemini (default: claude-x@20250101 "
        "and google/gemini-x). AWSBedrock: a model id (default: "
        "anthropic.claude-3-5-sonnet-20240620-v1:0)",
    )
    fake.add_argument(
        "--control-port",
        type=int,
        help="port of the control API: GET/DELETE /requests, PUT/DELETE /fault; GCPVertexAI's "
        "and AzureOpenAI's with Entra ID also have the token controls: GET /tokens, POST "
        '/tokens/expire and /tokens/revoke (JSON {"token": ...} for one, no body for all), PUT '
        '/token-lifetime {"seconds": n}; with Entra ID, PUT /client-secret {"clientSecret": ...} '
        "too. AWSBedrock's also has PUT /credentials "
        '{"accessKeyId", "secretAccessKey", "sessionToken"?}, DELETE /credentials/KEY_ID, and '
        'PUT /api-key {"apiKey": ...} replacing its Bedrock API keys',
    )
    fake.add_argument(
        "--stream-chunk-delay", type=float, default=0.0, help="seconds between streamed chunks"
    )
    fake.add_argument(
        "--keep-requests",
        type=int,
        default=None,
        help="remember only the newest N requests for GET /requests (default: all)",
    )
    fake.add_argument(
        "--tls-cert",
        help="serve https with this PEM certificate chain (GCPVertexAI: Vertex only, the "
        "token endpoint stays http)",
    )
    fake.add_argument("--tls-key", help="the certificate's PEM private key")
    vertex = fake.add_argument_group("GCPVertexAI only")
    vertex.add_argument("--project", help="the Google Cloud project it serves (required)")
    vertex.add_argument(
        "--location",
        action="append",
        default=[],
        help="a location it serves (us-east5, global...); repeatable (default: us-east5)",
    )
    vertex.add_argument(
        "--service-account-key",
        action="append",
        default=[],
        metavar="FILE",
        help="a service account's key JSON; the token endpoint issues tokens to the accounts "
        "of these keys; repeatable (at least one)",
    )
    vertex.add_argument(
        "--token-lifetime",
        type=int,
        metavar="SECONDS",
        help="how long an issued token lives (default 3599); also AzureOpenAI with Entra ID",
    )
    vertex.add_argument(
        "--auth-port",
        type=int,
        help="port of the token endpoint, POST /token (default: any free port, printed)",
    )
    vertex.add_argument(
        "--auth-control-port",
        type=int,
        help="port of the token endpoint's own control API, for its faults and requests "
        "(default: none; its tokens are steered through --control-port)",
    )
    vertex.add_argument(
        "--metadata-account",
        metavar="EMAIL",
        help="serve a GKE metadata server (on --auth-port) whose workload is this service "
        "account: GET /computeMetadata/v1/instance/service-accounts/default/token",
    )
    vertex.add_argument(
        "--token-creator",
        action="append",
        default=[],
        metavar="TARGET=CALLER",
        help="IAM's generateAccessToken (on --auth-port) gives TARGET's tokens to CALLER "
        "(roles/iam.serviceAccountTokenCreator); repeatable",
    )
    entra = fake.add_argument_group("AzureOpenAI with Entra ID only")
    entra.add_argument("--entra-tenant", help="the tenant (directory) id (required)")
    entra.add_argument("--entra-client-id", help="the app's client id (required)")
    entra.add_argument("--entra-client-secret", help="the app's client secret (required)")
    entra.add_argument(
        "--entra-port",
        type=int,
        help="port of the Entra ID token endpoint, https (default: any free port, printed)",
    )
    entra.add_argument(
        "--entra-tls-cert",
        help="the token endpoint's PEM certificate chain (required; clients must trust it)",
    )
    entra.add_argument("--entra-tls-key", help="its PEM private key (required)")
    entra.add_argument(
        "--entra-control-port",
        type=int,
        help="port of the token endpoint's own control API, for its faults and requests "
        "(default: none; its tokens and secret are steered through --control-port)",
    )

    bedrock = fake.add_argument_group("AWSBedrock only")
    bedrock.add_argument("--region", help="the AWS region it serves (required)")
    bedrock.add_argument(
        "--aws-credentials",
        action="append",
        default=[],
        metavar="FILE",
        help="an AWS shared-credentials file whose [default] keys (aws_access_key_id, "
        "aws_secret_access_key, aws_session_token if any) may sign requests; repeatable",
    )
    bedrock.add_argument(
        "--bedrock-api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="a Bedrock API key clients may send as Authorization: Bearer; repeatable (at "
        "least one of these or --aws-credentials)",
    )

    crds = commands.add_parser("crds", help="write the CRDs generated from the models")
    crds.add_argument("--output", type=Path, default=Path("crds"), help="directory (default: crds)")

    args = parser.parse_args(argv)
    if args.command == "run":
        metrics = f"0.0.0.0:{args.metrics_port}" if args.metrics_port is not None else None
        return run_command(
            args.namespace,
            args.xds_address,
            args.xds_service,
            args.envoy_image,
            args.resync_period,
            args.leader_elect,
            metrics,
            args.verbose,
            args.debug,
            ca_secret=args.ca_secret,
            cert_lifetime=args.cert_lifetime,
            ca_lifetime=args.ca_lifetime,
            gateway_network_policy=args.gateway_network_policy,
            pod_labels=args.pod_labels,
            rate_limit_service=args.rate_limit_service,
            rate_limit_redis=args.rate_limit_redis,
        )
    if args.command == "envoy":
        import asyncio

        from switchyard.local_envoy import run_envoy

        return asyncio.run(
            run_envoy(
                args.gateway,
                args.port,
                args.xds_address,
                args.admin_port,
                args.log_level,
                args.secret_delay,
            )
        )
    if args.command == "plan":
        return plan_command(args.filename, args.output)
    if args.command == "fake-provider":
        problem = fake_provider_problem(args)
        if problem is not None:
            fake.error(problem)
        return fake_provider_command(args)
    for path in write_crds(args.output):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
