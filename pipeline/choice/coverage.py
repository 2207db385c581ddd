"""Whether the user's data lies inside what the verdict was calibrated on: its probe accuracy, images per class,
image size and backbone within the calibration cases', and its scores near some case's (a data family unlike
any case is farther from every case than the cases are from their nearest other one)."""

import numpy as np

from pipeline.choice.verdict_rule import Case, Record, Scores


def profile(scores: Scores) -> np.ndarray:
    """The scores as a point: probe error, kNN gap, multi-depth gain, LogME, first-block BatchNorm shift."""
    first_shift = next(iter(scores.batchnorm_shift.values()), 0.0)
    return np.array(
        [
            100 * (1 - scores.probe_accuracy),
            100 * (scores.probe_accuracy - scores.knn_accuracy),
            100 * (scores.multi_depth_accuracy - scores.probe_accuracy),
            10 * scores.logme,
            10 * first_shift,
        ]
    )


class Coverage(Record):
    probe_accuracy: tuple[float, float]
    images_per_class: tuple[float, float]
    image_size: tuple[int, int]
    backbones: list[str]
    profiles: list[list[float]]  # every case's, standardised
    centre: list[float]
    scale: list[float]
    reach: float  # the farthest any case is from its nearest other case, standardised

    @classmethod
    def of(cls, cases: list[Case]) -> "Coverage":
        points = np.stack([profile(case.scores) for case in cases])
        centre, scale = points.mean(0), np.maximum(points.std(0), 1e-6)
        unit = (points - centre) / scale
        distances = np.linalg.norm(unit[:, None] - unit[None], axis=2) + np.diag(np.full(len(cases), np.inf))
        return cls(
            probe_accuracy=(min(c.scores.probe_accuracy for c in cases), max(c.scores.probe_accuracy for c in cases)),
            images_per_class=(
                min(c.scores.images_per_class for c in cases),
                max(c.scores.images_per_class for c in cases),
            ),
            image_size=(min(c.image_size for c in cases), max(c.image_size for c in cases)),
            backbones=sorted({c.backbone for c in cases}),
            profiles=unit.tolist(),
            centre=centre.tolist(),
            scale=scale.tolist(),
            reach=float(distances.min(1).max()),
        )

    def outside(self, scores: Scores, image_size: int, backbone: str) -> list[str]:
        """In plain words, each way the data lies outside the calibration; empty when it lies inside."""
        notes = []
        low, high = self.probe_accuracy
        if not low <= scores.probe_accuracy <= high:
            notes.append(
                f"its probe accuracy {scores.probe_accuracy:.3f} is outside the cases' {low:.3f} to {high:.3f}"
            )
        low, high = self.images_per_class
        if not low <= scores.images_per_class <= high:
            notes.append(
                f"{scores.images_per_class:.0f} images per class is outside the cases' {low:.0f} to {high:.0f}"
            )
        if not self.image_size[0] <= image_size <= self.image_size[1]:
            notes.append(f"{image_size} px is outside the cases' {self.image_size[0]} to {self.image_size[1]} px")
        if backbone not in self.backbones:
            notes.append(f"no case was measured with {backbone} (only {', '.join(self.backbones)})")
        unit = (profile(scores) - np.array(self.centre)) / np.array(self.scale)
        nearest = float(np.linalg.norm(np.array(self.profiles) - unit, axis=1).min())
        if nearest > self.reach:
            notes.append(
                f"its scores are farther from every case ({nearest:.1f}) than any case is from its nearest "
                f"({self.reach:.1f}): data unlike any calibration family"
            )
        return notes
