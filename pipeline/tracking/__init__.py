"""MLflow: the store, the runs every stage logs to, and the model registry with its promotion rule."""
