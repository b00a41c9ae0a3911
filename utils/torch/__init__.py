"""PyTorch side of b-hive: data loading, optimisation, the training loop (law-free)."""
