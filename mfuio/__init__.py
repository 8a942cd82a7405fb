"""Shared I/O of the stages: the Faust app factory, Kafka admin, InfluxDB writer, the
HTTP endpoint server (health and the agent's metrics) and the sinks."""
