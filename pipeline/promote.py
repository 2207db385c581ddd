"""Choose the model to serve: point the registry alias `champion` at the best comparable version.

    python -m pipeline.promote                  # the best version comparable with the champion
    python -m pipeline.promote --version 3      # that version, if comparable and better
    python -m pipeline.promote --version 3 --force

Versions are compared by the test accuracy export tagged them with, and only with versions of the
same class list scored on the same test split as the champion (pipeline.registry). The best one
replaces the champion only if the test split separates them: an exact McNemar test on the images
only one of the two got right, at the 5% level. --force promotes anyway and says what it overrode.
`make serve` loads `models:/NAME@champion` at start-up: restart it to serve the new champion.
"""

import argparse
import sys

from mlflow import MlflowClient

from pipeline import registry, tracking
from pipeline.config import load_params
from pipeline.registry import Candidate

SIGNIFICANCE = 0.05


class PromotionError(RuntimeError):
    """No version can be chosen; the message says why."""


def accuracy_text(candidate: Candidate) -> str:
    return "no test accuracy" if candidate.accuracy is None else f"test accuracy {candidate.accuracy:.4f}"


def table(candidates: list[Candidate], champion: Candidate | None) -> str:
    """The versions as a table: what they are, their test accuracy, and whether they can be compared."""
    reference = champion or candidates[-1]
    lines = [f"{'version':>7}  {'test acc':>8}  {'images':>6}  {'strategy':<10} {'backbone':<22} {'data':<28} status"]
    for c in candidates:
        differences = c.differences(reference)
        status = "champion" if champion and c.version == champion.version else "comparable"
        if differences:
            status = "not comparable: " + "; ".join(differences)
        accuracy = "-" if c.accuracy is None else f"{c.accuracy:.4f}"
        lines.append(
            f"{c.version:>7}  {accuracy:>8}  {c.test_images:>6}  {c.tags.get('strategy', '?'):<10} "
            f"{c.tags.get('backbone', '?'):<22} {c.tags.get('data_source', '?')[-28:]:<28} {status}"
        )
    return "\n".join(lines)


def choose(
    candidates: list[Candidate], champion: Candidate | None, version: int | None
) -> tuple[Candidate, str | None]:
    """The version to promote (`version`, or the best comparable one), and why it should not replace the
    champion: not comparable, not better, or not separable by the test split (None: nothing against it)."""
    by_version = {c.version: c for c in candidates}
    reference = champion or candidates[-1]
    if version is not None:
        if version not in by_version:
            raise PromotionError(f"there is no version {version}; there are {', '.join(map(str, by_version))}")
        chosen = by_version[version]
    else:
        comparable = [c for c in candidates if not c.differences(reference) and c.accuracy is not None]
        if not comparable:
            raise PromotionError(f"no version is comparable with v{reference.version}")
        # on a tie the champion stays: a version only replaces it by doing better
        chosen = max(
            comparable, key=lambda c: (c.accuracy, champion is not None and c.version == champion.version, c.version)
        )
    if champion is None or chosen.version == champion.version:
        return chosen, None
    if differences := chosen.differences(champion):
        return (
            chosen,
            f"v{chosen.version} cannot be compared with champion v{champion.version}: {'; '.join(differences)}",
        )
    if chosen.accuracy is None or chosen.accuracy <= champion.accuracy:
        return chosen, (
            f"v{chosen.version} ({accuracy_text(chosen)}) is not better than champion v{champion.version} "
            f"({champion.accuracy:.4f})"
        )
    p_value = registry.separation_p_value(chosen, champion)
    if p_value >= SIGNIFICANCE:
        return chosen, (
            f"the test split of {champion.test_images} images is too small to separate v{chosen.version} "
            f"({chosen.accuracy:.4f}) from champion v{champion.version} ({champion.accuracy:.4f}): p = {p_value:.2f}, "
            f"{SIGNIFICANCE} needed; a larger data.test_fraction would tell"
        )
    return chosen, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", type=int, help="model version to promote (default: the best comparable one)")
    parser.add_argument("--alias", default=registry.CHAMPION, help="registry alias to set (default: champion)")
    parser.add_argument("--force", action="store_true", help="promote even if not comparable or not better")
    args = parser.parse_args()
    name = load_params().registered_model()
    try:
        tracking.check_reachable()  # MLflow's client would retry a dead server before it says so
    except tracking.TrackingServerUnreachable as exc:
        sys.exit(f"not promoted: {exc}")
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    candidates = registry.candidates(client, name)
    if not candidates:
        sys.exit(f"not promoted: registered model {name!r} has no versions: run `dvc repro` first")
    holder = registry.champion(client, name, args.alias)
    champion = next((c for c in candidates if holder and c.version == int(holder.version)), None)
    print(f"{name}:\n{table(candidates, champion)}\n")
    try:
        chosen, objection = choose(candidates, champion, args.version)
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
        "restart `make serve` to serve it"
    )


if __name__ == "__main__":
    main()
