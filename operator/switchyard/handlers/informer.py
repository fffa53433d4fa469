"""What feeds the store besides watch events: the list before the first pass, and relists.

Watch events keep the store current, but a watch that expires (410 Gone after etcd
compacts) or a cut connection loses the events of the gap, and Kopf reports no deletions
when it lists again. So, like an informer, the operator relists on its own: once soon after
it starts (closing the gap between its first list and Kopf's), soon after the API server
answers again following a time it did not (a gap is likely then), and every resync period.
A relist drops what is gone, re-reads every referenced Secret, and has the next pass verify
each owned object instead of trusting what it last wrote, so drift missed in a gap is
repaired. On a converged cluster it reads and writes nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from switchyard.handlers.state import Store
from switchyard.handlers.sync import GatewaySync
from switchyard.kube.client import Kube, describe_error
from switchyard.plan.clients import TokenIssuer

logger = logging.getLogger(__name__)

# The first relist after start: by then Kopf has listed and watches everything.
FIRST_RESYNC_SECONDS = 30.0
DEFAULT_RESYNC_SECONDS = 300.0
RECONNECTED_DELAY_SECONDS = 2.0


async def _listed(
    kube: Kube, namespaces: tuple[str, ...]
) -> tuple[
    list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, str]], list[dict[str, Any]]
]:
    gateways = await kube.list_custom("modelgateways", namespaces)
    endpoints = await kube.list_custom("modelendpoints", namespaces)
    labels = {
        item["metadata"]["name"]: item["metadata"].get("labels") or {}
        for item in await kube.list_namespaces()
    }
    clients = await kube.list_custom("modelclients", namespaces)
    return gateways, endpoints, labels, clients


async def token_issuer(kube: Kube) -> TokenIssuer | None:
    """The cluster's ServiceAccount token issuer and its keys, or None when the API server
    does not say (clients are then identified by API key only, until a relist finds it)."""
    try:
        found = await kube.service_account_issuer()
    except asyncio.CancelledError:
        raise
    except Exception as error:
        logger.warning(
            "cannot read the ServiceAccount token issuer (%s): ModelClients are identified "
            "by API key only until it can be read",
            describe_error(error),
        )
        return None
    return TokenIssuer(*found) if found is not None else None


async def prime(kube: Kube, store: Store, namespaces: tuple[str, ...]) -> None:
    """Fill the store before the first pass: a pass over a half-listed gateway would drop
    endpoints from its Secret and write them back a moment later. `switchyard run
    --namespace` passes its namespaces; KopfRunner passes none."""
    store.relist_started()
    store.replace_all(*await _listed(kube, namespaces))


async def resync(kube: Kube, store: Store, sync: GatewaySync, namespaces: tuple[str, ...]) -> None:
    """One relist: the store made equal to the cluster, referenced Secrets read again, and
    every gateway passed over with its owned objects verified."""
    store.relist_started()
    affected = store.replace_all(*await _listed(kube, namespaces))
    sync.set_issuer(await token_issuer(kube))
    for secret in sorted(store.referenced_secrets()):
        data = await kube.read_secret_data(*secret)
        if sync.secrets.observe(secret, data):
            affected |= store.gateways_using_secret(secret)
    sync.forget_owned()
    sync.mark(affected | store.gateway_keys())
    if affected:
        logger.info("relist found changes no watch event had brought, in %d gateway(s)",
                    len(affected))  # fmt: skip


async def resync_forever(
    kube: Kube,
    store: Store,
    sync: GatewaySync,
    namespaces: tuple[str, ...],
    period: float,
    reconnected: asyncio.Event,
) -> None:
    """Relist every `period`, the first time sooner, and soon after `reconnected` is set."""
    delay = min(FIRST_RESYNC_SECONDS, period)
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reconnected.wait(), delay)
            # Kopf's watches resume meanwhile, through their own 410 relist if need be.
            await asyncio.sleep(RECONNECTED_DELAY_SECONDS)
        reconnected.clear()
        delay = period
        try:
            await resync(kube, store, sync, namespaces)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the next period tries again; watches go on meanwhile
            logger.warning("relist failed (%s); next in %.0fs", describe_error(error), period)
