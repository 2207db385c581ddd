"""Which model the server serves: SERVING_MODEL (an .onnx path, `models:/NAME@ALIAS` or `models:/NAME/VERSION`)
resolved into a local .onnx file and where it came from."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from pipeline.release.onnx_runtime import ModelLoadError

REGISTRY = "models:/"


@dataclass(frozen=True)
class ModelSource:
    """Where the served file came from: a registry version (with its alias, if named by one), or a file."""

    name: str  # the registered model's name, or the file's name
    version: int | None = None  # None for a file
    alias: str | None = None
    run_id: str | None = None  # the run that logged the registered version
    test_accuracy: float | None = None  # tagged by export (pipeline.tracking.registry), if it was

    def metadata_fields(self) -> dict[str, str | int | float | None]:
        """The source's fields for `/v1/metadata`; a file has no run, so no `run_id` key at all."""
        fields = dataclasses.asdict(self)
        if self.version is None:
            del fields["run_id"]
        return fields

    def shown(self, path: Path) -> str:
        """How the start-up log names the served model: `NAME vVERSION @ALIAS`, or the file's path."""
        if self.version is None:
            return str(path)
        return f"{self.name} v{self.version}" + (f" @{self.alias}" if self.alias else "")


def resolve_model(spec: str) -> tuple[Path, ModelSource]:
    """The local .onnx file for SERVING_MODEL, and where it came from."""
    if spec.startswith(REGISTRY):
        return from_registry(spec)
    path = Path(spec)
    if not path.is_file():
        raise ModelLoadError(f"SERVING_MODEL={spec}: no such file (run `dvc repro` to export models/model.onnx)")
    return path, ModelSource(name=path.name)


def alias_version(spec: str) -> int | None:
    """The version `models:/NAME@ALIAS` names now (a query, no download); None for a spec that names no alias."""
    if not spec.startswith(REGISTRY) or "@" not in spec:
        return None
    from mlflow import MlflowClient

    from pipeline.tracking import store

    name, alias = spec.removeprefix(REGISTRY).split("@", 1)
    return int(MlflowClient(tracking_uri=store.tracking_uri()).get_model_version_by_alias(name, alias).version)


def from_registry(spec: str) -> tuple[Path, ModelSource]:
    """Download the registry version `spec` names from the MLflow store."""
    # Only a registry model needs MLflow: a server of an .onnx file starts without importing it.
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import store

    try:
        store.check_reachable()  # MLflow's client would retry a dead server for minutes
    except store.TrackingServerUnreachable as exc:
        raise ModelLoadError(f"SERVING_MODEL={spec}: {exc}") from None
    reference = spec.removeprefix(REGISTRY)
    name, alias = reference.split("@", 1) if "@" in reference else (reference.rsplit("/", 1)[0], None)
    client = MlflowClient(tracking_uri=store.tracking_uri())
    try:
        if alias:
            version = client.get_model_version_by_alias(name, alias)
        else:
            version = client.get_model_version(name, reference.rsplit("/", 1)[-1])
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{REGISTRY}{name}/{version.version}", tracking_uri=store.tracking_uri()
        )
    except MlflowException as exc:
        hint = " (set it with `python -m pipeline.commands.promote`)" if alias else ""
        raise ModelLoadError(f"SERVING_MODEL={spec} on {store.shown_uri()}: {exc.message}{hint}") from None
    files = sorted(Path(local).glob("*.onnx"))
    if not files:
        raise ModelLoadError(f"SERVING_MODEL={spec}: the registered model holds no .onnx file")
    accuracy = version.tags.get("test_accuracy")
    source = ModelSource(
        name=name,
        version=int(version.version),
        alias=alias,
        run_id=version.run_id,
        test_accuracy=None if accuracy is None else float(accuracy),
    )
    return files[0], source
