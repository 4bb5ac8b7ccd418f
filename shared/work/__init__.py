"""Work on the bus: job queues, the model store and its local caches."""
