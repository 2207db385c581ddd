"""Choose the model to serve: point a registry alias (`champion` by default) at a model version.

    python -m pipeline.promote                      # the newest version of mlflow.registered_model
    python -m pipeline.promote --version 3
    python -m pipeline.promote --version 3 --force  # even with a lower test accuracy than the champion

A version whose test accuracy (logged by the evaluate stage) is below the current holder of the
alias is refused unless --force. The service loads `models:/NAME@champion`.
"""

import argparse
import sys

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pipeline import tracking
from pipeline.config import load_params


class PromotionError(RuntimeError):
    """The version cannot take the alias; the message says why."""


def test_accuracy(client: MlflowClient, version: ModelVersion) -> float | None:
    return client.get_run(version.run_id).data.metrics.get("test_accuracy") if version.run_id else None


def promote(client: MlflowClient, name: str, version: int | None = None, alias: str = "champion", force: bool = False):
    """Set `alias` on `version` (default: the newest); return (the version, the previous holder or None)."""
    versions = {int(v.version): v for v in client.search_model_versions(f"name='{name}'")}
    if not versions:
        raise PromotionError(f"registered model {name!r} has no versions: run `dvc repro` first")
    chosen = version or max(versions)
    if chosen not in versions:
        raise PromotionError(f"{name} has no version {chosen}; it has {', '.join(map(str, sorted(versions)))}")
    candidate = versions[chosen]
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None
    if current is not None and int(current.version) != chosen and not force:
        new, old = test_accuracy(client, candidate), test_accuracy(client, current)
        if old is not None and (new is None or new < old):
            shown = "no test accuracy" if new is None else f"test accuracy {new:.4f}"
            raise PromotionError(
                f"{name} v{chosen} has {shown}, below {alias} v{current.version} ({old:.4f}); "
                "pass --force to promote it anyway"
            )
    client.set_registered_model_alias(name, alias, str(chosen))
    return candidate, current


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", type=int, help="model version to promote (default: the newest)")
    parser.add_argument("--alias", default="champion", help="registry alias to set (default: champion)")
    parser.add_argument("--force", action="store_true", help="promote even if its test accuracy is lower")
    args = parser.parse_args()
    name = load_params().mlflow.registered_model
    try:
        tracking.check_reachable()  # MLflow's client would retry a dead server before it says so
    except tracking.TrackingServerUnreachable as exc:
        sys.exit(f"not promoted: {exc}")
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    try:
        candidate, previous = promote(client, name, args.version, args.alias, args.force)
    except PromotionError as exc:
        sys.exit(f"not promoted: {exc}")
    before = f" (was v{previous.version})" if previous and previous.version != candidate.version else ""
    print(
        f"models:/{name}@{args.alias} -> v{candidate.version}{before}, test accuracy {test_accuracy(client, candidate)}"
    )


if __name__ == "__main__":
    main()
