"""Training: the one fine-tuning loop every trial runs through, its device helpers, the cached frozen features
and the heads trained on them. Knows nothing of Optuna."""
