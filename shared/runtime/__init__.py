"""What every service process runs in: the service frame, supervisor, logs, counters."""
