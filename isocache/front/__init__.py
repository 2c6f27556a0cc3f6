"""The client-facing HTTP front: routes, range responses, error mapping."""
