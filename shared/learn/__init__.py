"""Learning without NATS: games, search, solvers, the net, inference, self-play, training."""
