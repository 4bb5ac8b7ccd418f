"""The master loop: scheduling policy, observation, effects, SPRT, ratings, presets."""
