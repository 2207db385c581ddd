"""Which registered version may replace the champion: the best comparable one, and only if the test split
separates it from the champion (an exact McNemar test on the images only one of the two got right, at the
5% level). `python -m pipeline.commands.promote` applies it."""

from pipeline.tracking import registry
from pipeline.tracking.registry import Candidate

SIGNIFICANCE = 0.05


class PromotionError(RuntimeError):
    """No version can be chosen; the message says why."""


def accuracy_text(candidate: Candidate) -> str:
    return "no test accuracy" if candidate.accuracy is None else f"test accuracy {candidate.accuracy:.4f}"


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
