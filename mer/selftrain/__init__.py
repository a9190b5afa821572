"""Self-training: rounds of multi-model pseudo-labels resolved by a prior-knowledge vote."""
