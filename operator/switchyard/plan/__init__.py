"""Pure planning: specs and observed state in, routing decisions out. No I/O."""
