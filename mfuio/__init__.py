"""Shared I/O of the stages: health endpoint (also the agent's HTTP server) and sinks."""
