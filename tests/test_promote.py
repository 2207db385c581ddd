"""pipeline.commands.promote on a real sqlite registry whose versions carry the tags export writes."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline.tracking import registry
from pipeline.tracking.promotion import PromotionError, choose
from tests.conftest import ROOT, stage_env

NAME = "animal-shape-classifier"
CLASSES = json.dumps(["cat", "dog"])


def correct_on(images: int, right: int) -> np.ndarray:
    return np.arange(images) < right


def add_version(
    client, tmp_path, right: int, images: int = 450, classes=CLASSES, test_split="split-a", name=NAME
) -> None:
    """A version as export registers it: tags and description in the call that creates it, champion if first."""
    tags = {
        "data_source": "data/builtin/animal-shape",
        "test_split": test_split,
        "classes": classes,
        "test_images": str(images),
        "test_accuracy": str(right / images),
        "strategy": "partial",
        "backbone": "efficientnet_lite0",
        "git_commit": "0" * 40,
        "dvc_experiment": "",
    }
    tags |= registry.correctness_tag(correct_on(images, right))
    source = (tmp_path / "model").as_uri()
    version = client.create_model_version(name, source, tags=tags, description=registry.describe(tags)).version
    registry.crown_if_first(client, name, str(version))


@pytest.fixture
def client(tmp_path) -> MlflowClient:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model(NAME)
    return client


def candidates_and_champion(client):
    candidates = registry.candidates(client, NAME)
    holder = registry.champion(client, NAME)
    return candidates, next(c for c in candidates if c.version == int(holder.version))


def test_versions_carry_tags_and_a_description_and_the_first_becomes_champion(client, tmp_path):
    add_version(client, tmp_path, right=428)
    add_version(client, tmp_path, right=300)
    first, second = client.get_model_version(NAME, "1"), client.get_model_version(NAME, "2")
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1  # not moved by the second
    assert first.tags["test_images"] == "450" and float(first.tags["test_accuracy"]) == pytest.approx(428 / 450)
    assert "partial" in first.description and "0.9511 on 450 images" in first.description
    assert second.description != first.description


def test_the_best_comparable_version_wins_not_the_newest(client, tmp_path):
    add_version(client, tmp_path, right=400)  # v1, champion
    add_version(client, tmp_path, right=440)  # v2, best: 40 images more right, none fewer
    add_version(client, tmp_path, right=410)  # v3, newest
    add_version(client, tmp_path, right=450, classes=json.dumps(["circle", "square"]))  # v4: other classes
    candidates, champion = candidates_and_champion(client)
    chosen, objection = choose(candidates, champion, version=None)
    assert (chosen.version, objection) == (2, None)


def test_a_version_of_other_classes_or_another_test_split_is_objected_to_naming_the_difference(client, tmp_path):
    add_version(client, tmp_path, right=400)
    add_version(client, tmp_path, right=12, images=12, classes=json.dumps(["circle", "square", "star"]))
    add_version(client, tmp_path, right=449, test_split="split-b")
    candidates, champion = candidates_and_champion(client)
    chosen, objection = choose(candidates, champion, version=2)
    assert chosen.version == 2 and objection.startswith("v2 cannot be compared with champion v1: class list differs")
    assert "test split differs (split-b vs split-a)" in choose(candidates, champion, version=3)[1]
    with pytest.raises(PromotionError, match="there is no version 7; there are 1, 2, 3"):
        choose(candidates, champion, version=7)


def test_on_a_tie_the_champion_stays(client, tmp_path):
    add_version(client, tmp_path, right=400)
    add_version(client, tmp_path, right=400)  # the same score, newer
    candidates, champion = candidates_and_champion(client)
    assert choose(candidates, champion, version=None) == (champion, None)


def test_a_worse_or_inseparable_version_is_objected_to(client, tmp_path):
    add_version(client, tmp_path, right=400)
    add_version(client, tmp_path, right=390)  # worse
    add_version(client, tmp_path, right=403)  # 3 more images right: within chance
    candidates, champion = candidates_and_champion(client)
    assert choose(candidates, champion, version=2)[1] == (
        "v2 (test accuracy 0.8667) is not better than champion v1 (0.8889)"
    )
    chosen, objection = choose(candidates, champion, version=None)
    assert chosen.version == 3
    assert re.match(r"the test split of 450 images is too small to separate v3 .* p = 0\.25", objection)


def promote_in(tmp_path, *arguments: str) -> subprocess.CompletedProcess:
    """`python -m pipeline.commands.promote` in a project of the default params.yaml, on the registry of `client`."""
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    env = stage_env(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    command = [sys.executable, "-m", "pipeline.commands.promote", *arguments]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, check=False)


def test_the_command_prints_the_candidates_moves_the_alias_and_says_what_force_overrode(client, tmp_path):
    add_version(client, tmp_path, right=380)
    add_version(client, tmp_path, right=430)

    def promote(*arguments: str) -> subprocess.CompletedProcess:
        return promote_in(tmp_path, *arguments)

    best = promote()
    assert best.returncode == 0, best.stderr
    assert "champion" in best.stdout and "0.9556" in best.stdout and "0.8444" in best.stdout
    assert f"models:/{NAME}@champion -> v2 (was v1), test accuracy 0.9556" in best.stdout
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 2
    worse = promote("--version", "1")
    assert worse.returncode == 1
    assert "not promoted: v1 (test accuracy 0.8444) is not better than champion v2 (0.9556). Pass --force" in (
        worse.stderr
    )
    forced = promote("--version", "1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "--force overrides: v1 (test accuracy 0.8444) is not better than champion v2 (0.9556)" in forced.stdout
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1


def test_a_version_without_the_tags_of_export_is_never_promoted(client, tmp_path):
    """What a killed export of the pipeline before issue 28 left: a version with no tags. Before, --force made it
    champion, and serving loaded a model nothing was known of."""
    add_version(client, tmp_path, right=400)
    client.create_model_version(NAME, (tmp_path / "model").as_uri())  # v2: no tags
    forced = promote_in(tmp_path, "--version", "2", "--force")
    assert forced.returncode == 1
    assert re.search(r"(?m)^ +2 +- +0  \? .* incomplete: it has no test accuracy", forced.stdout), forced.stdout
    assert forced.stderr.strip() == (
        "not promoted: v2 is incomplete: it has no test accuracy and classes to compare (left by an export that did "
        "not finish); not even --force promotes it"
    )
    best = promote_in(tmp_path)
    assert best.returncode == 0 and "v1 is already @champion: nothing to do" in best.stdout
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1


def test_promote_takes_any_registered_model_whatever_params_yaml_names(client, tmp_path):
    """After an experiment on other data, params.yaml names that data's model: --model reaches the others."""
    client.create_registered_model("digits-classifier")
    add_version(client, tmp_path, right=380, name="digits-classifier")
    add_version(client, tmp_path, right=430, name="digits-classifier")
    moved = promote_in(tmp_path, "--model", "digits-classifier")
    assert moved.returncode == 0, moved.stderr
    assert "models:/digits-classifier@champion -> v2 (was v1)" in moved.stdout
    assert int(client.get_model_version_by_alias("digits-classifier", "champion").version) == 2
    unknown = promote_in(tmp_path, "--model", "no-such-classifier")
    assert unknown.returncode == 1
    assert "registered: animal-shape-classifier, digits-classifier)" in unknown.stderr
