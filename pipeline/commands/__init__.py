"""Commands run by hand, beside the stages: compare, apply, promote, calibrate, shards. Like the stages, they
meet the pipeline only through its files and the MLflow store."""
