import pytest
from tests.conftest import REPO

from ssp.config import ConfigError, load_config


def test_defaults_are_the_embedded_default():
    cfg = load_config()
    assert cfg.model.name_or_path == "embedded"
    assert cfg.model.finetune == "lora"
    assert cfg.replay.mode == "ucb"


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["run.max_steps=7", "replay.mode=uniform", "rl.kl_coef=0"])
    assert cfg.run.max_steps == 7 and cfg.replay.mode == "uniform" and cfg.rl.kl_coef == 0.0
    assert cfg.model.name_or_path == "tiny"  # from the file


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("run.max_stepz=2", "run.max_stepz: unknown key"),
        ("replay.mode=sometimes", "replay.mode"),
        ("rl.learning_rate=-1", "rl.learning_rate"),
        ("nosuchsection.x=1", "nosuchsection: unknown key"),
    ],
)
def test_bad_keys_name_the_key_and_reason(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_override_without_equals_is_explained():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["run.max_steps"])


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  max_steps: 2\n  seed: [1, 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert str(bad) in str(err.value) and "line" in str(err.value)


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_every_preset_validates():
    for preset in sorted((REPO / "configs").glob("*.yaml")):
        load_config(preset)


def test_benign_share_sets_benign_count():
    cfg = load_config(None, ["game.goals_per_step=4", "game.benign_share=0.5"])
    assert cfg.game.benign_per_step == 4
    assert load_config(None, ["game.benign_share=0"]).game.benign_per_step == 0
