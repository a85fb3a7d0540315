"""Search: the Optuna study (study), the only trial.suggest_* calls (space), seeding (sampling), crash
recovery (liveness) and worker processes (workers)."""
