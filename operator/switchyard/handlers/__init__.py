"""The thin Kopf shell: watch events in, gateway passes out."""
