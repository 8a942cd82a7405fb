"""Shared I/O of the stream and policies stages: health endpoint and sinks."""
