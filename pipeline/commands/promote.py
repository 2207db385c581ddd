"""Choose the model to serve: point the registry alias `champion` at the best comparable version.

    python -m pipeline.commands.promote                  # the best version comparable with the champion
    python -m pipeline.commands.promote --version 3      # that version, if comparable and better
    python -m pipeline.commands.promote --version 3 --force
    python -m pipeline.commands.promote --model digits-classifier   # whatever data params.yaml names now

Versions are compared by the test accuracy export tagged them with, and only with versions of the
same class list scored on the same test split as the champion (pipeline.tracking.registry). The best one
replaces the champion only if the test split separates them: an exact McNemar test on the images
only one of the two got right, at the 5% level. --force promotes anyway and says what it overrode; a version
without the tags export writes (left by a killed export of an older pipeline) is never promoted.
A running `make serve` of `models:/NAME@champion` switches to the new champion within serving.follow_registry_s.
"""

import argparse
import sys

from mlflow import MlflowClient

from pipeline.config import load_params
from pipeline.tracking import registry, store
from pipeline.tracking.promotion import PromotionError, accuracy_text, choose
from pipeline.tracking.registry import Candidate

INCOMPLETE = "incomplete: it has no test accuracy and classes to compare (left by an export that did not finish)"


def table(candidates: list[Candidate], champion: Candidate | None) -> str:
    """The versions as a table: what they are, their test accuracy, and whether they can be compared."""
    reference = champion or candidates[-1]
    lines = [f"{'version':>7}  {'test acc':>8}  {'images':>6}  {'strategy':<10} {'backbone':<22} {'data':<28} status"]
    for c in candidates:
        differences = c.differences(reference)
        status = "champion" if champion and c.version == champion.version else "comparable"
        if differences:
            status = "not comparable: " + "; ".join(differences)
        if not c.complete:
            status = INCOMPLETE
        accuracy = "-" if c.accuracy is None else f"{c.accuracy:.4f}"
        lines.append(
            f"{c.version:>7}  {accuracy:>8}  {c.test_images:>6}  {c.tags.get('strategy', '?'):<10} "
            f"{c.tags.get('backbone', '?'):<22} {c.tags.get('data_source', '?')[-28:]:<28} {status}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", type=int, help="model version to promote (default: the best comparable one)")
    parser.add_argument("--alias", default=registry.CHAMPION, help="registry alias to set (default: champion)")
    parser.add_argument("--force", action="store_true", help="promote even if not comparable or not better")
    parser.add_argument("--model", help="registered model (default: params.yaml's, named after its data.source)")
    args = parser.parse_args()
    name = args.model or load_params().registered_model()
    try:
        store.check_reachable()  # MLflow's client would retry a dead server before it says so
    except store.TrackingServerUnreachable as exc:
        sys.exit(f"not promoted: {exc}")
    client = MlflowClient(tracking_uri=store.tracking_uri())
    candidates = registry.candidates(client, name)
    if not candidates:
        others = ", ".join(sorted(model.name for model in client.search_registered_models())) or "none"
        sys.exit(
            f"not promoted: registered model {name!r} has no versions: run `dvc repro` first, or name another "
            f"with --model (registered: {others})"
        )
    holder = registry.champion(client, name, args.alias)
    champion = next((c for c in candidates if holder and c.version == int(holder.version)), None)
    print(f"{name}:\n{table(candidates, champion)}\n")
    if any(c.version == args.version and not c.complete for c in candidates):
        sys.exit(f"not promoted: v{args.version} is {INCOMPLETE}; not even --force promotes it")
    complete = [c for c in candidates if c.complete]
    if not complete:
        sys.exit(f"not promoted: no version of {name!r} is complete: run `dvc repro` first")
    try:
        chosen, objection = choose(complete, champion, args.version)
    except PromotionError as exc:
        sys.exit(f"not promoted: {exc}")
    if objection and not args.force:
        sys.exit(f"not promoted: {objection}. Pass --force to promote it anyway")
    if champion and chosen.version == champion.version:
        print(f"v{chosen.version} is already @{args.alias}: nothing to do")
        return
    if objection:
        print(f"--force overrides: {objection}")
    client.set_registered_model_alias(name, args.alias, str(chosen.version))
    was = f" (was v{champion.version})" if champion else ""
    print(
        f"models:/{name}@{args.alias} -> v{chosen.version}{was}, {accuracy_text(chosen)}; "
        f"a running `make serve` of it switches within serving.follow_registry_s"
    )


if __name__ == "__main__":
    main()
