"""Results: what a search leaves on disk and hands back: the run directory's files, the saved model and its
loader, evaluations, the leaderboard, report, plots, model card, manifest and exports."""
