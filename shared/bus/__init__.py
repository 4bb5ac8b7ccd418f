"""The one way to NATS: the client adapter, provisioning, the embedded server, version skew."""
