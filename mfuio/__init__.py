"""Shared I/O of the stream and policies stages: the Faust app factory, Kafka admin,
InfluxDB writer, health endpoint and sinks."""
