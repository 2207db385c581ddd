"""What a model's test scores are worth: the calibration error, and the smallest difference its test split can tell."""

import pytest
import torch

from pipeline.model.scoring import expected_calibration_error, small_test_split_warning, smallest_detectable_difference


@pytest.mark.parametrize(
    ("test_images", "shown"), [(18, "differ by 33 points or more"), (60, "differ by 10 points or more"), (120, None)]
)
def test_a_test_split_too_small_to_rank_strategies_says_what_it_can_tell(test_images, shown):
    """McNemar's exact test needs 6 images won by one model to reach 5%: 6 / n is what n images can tell."""
    assert smallest_detectable_difference(test_images) == pytest.approx(6 / test_images)
    warning = small_test_split_warning(test_images)
    if shown is None:
        assert warning is None
    else:
        assert f"the test split's {test_images} images" in warning and shown in warning


def test_the_calibration_error_is_the_gap_between_confidence_and_accuracy():
    # four images at 0.9 confidence, three right: |0.75 - 0.9| in the one occupied bin
    probabilities = torch.tensor([[0.9, 0.1]] * 4)
    assert expected_calibration_error(probabilities, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.15)
    assert expected_calibration_error(torch.tensor([[1.0, 0.0]] * 2), torch.tensor([0, 0])) == 0.0
