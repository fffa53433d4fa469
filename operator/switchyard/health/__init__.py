"""Active health probes and the healthy/unhealthy state machine."""
