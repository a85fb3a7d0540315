"""The run directory: every file and folder name a search writes, in one place.

```
RUN_DIR/
  study.journal          the Optuna study (unless --storage names a database)
  leaderboard.csv/.md    every trial, best first          summary.json    the outcome in one object
  transferability.csv/.md  the pre-ranking                 skipped.csv     the rows not trained on
  manifest.json          versions, seeds, data hash       report.html     the report, plots/ its figures
  MODEL_CARD.md          what the best model is and how it was measured
  best_model/            model.safetensors + config.json (+ metrics.json): the best single model
  ensemble_model/        ensemble.json + member_N/ model folders: when kept, what automl_tl.load() reads
                         (a concatenated-feature member: concatenated.json + part_N/ model folders)
  trial_predictions/     each finished trial's validation probabilities, what the ensemble is chosen from
  exports/               what automl-tl export writes
```
"""

JOURNAL_FILE = "study.journal"
LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
SUMMARY_FILE = "summary.json"
TRANSFERABILITY_CSV = "transferability.csv"
TRANSFERABILITY_MD = "transferability.md"
SKIPPED_FILE = "skipped.csv"
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.html"
PLOTS_DIR = "plots"
MODEL_CARD_FILE = "MODEL_CARD.md"
BEST_MODEL_DIR = "best_model"
#: held while the best model is compared and replaced (workers share a run directory)
BEST_MODEL_LOCK = ".best_model.lock"
EXPORTS_DIR = "exports"
ENSEMBLE_DIR = "ensemble_model"
ENSEMBLE_FILE = "ensemble.json"
#: inside an ensemble member that is a probe on several bodies' concatenated embeddings
CONCATENATED_FILE = "concatenated.json"
TRIAL_PREDICTIONS_DIR = "trial_predictions"
#: inside a model folder
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"

#: the files of a finished run that a person reads (what a tracker such as MLflow uploads)
RESULT_FILES = (
    LEADERBOARD_CSV,
    LEADERBOARD_MD,
    SUMMARY_FILE,
    MANIFEST_FILE,
    TRANSFERABILITY_CSV,
    REPORT_FILE,
    MODEL_CARD_FILE,
)
