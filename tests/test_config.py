"""Dataclass configs: YAML files and key=value overrides, with typos caught."""
from __future__ import annotations

import pytest

from face3d.config import apply_overrides, config_to_dict, load_config, parse_override
from face3d.errors import UsageError
from face3d.pipeline import ReconstructConfig


def test_nested_overrides_and_types(tmp_path):
    cfg = apply_overrides(ReconstructConfig(), {"detail": 0, "photometric": {"iterations": 7, "lr": 1}})
    assert cfg.detail == 0.0 and isinstance(cfg.detail, float)
    assert cfg.photometric.iterations == 7 and cfg.photometric.lr == 1.0
    assert ReconstructConfig().photometric.iterations != 7  # the default is untouched
    path = tmp_path / "c.yaml"
    path.write_text("model: anny\ntexture:\n  size: 512\nsfs:\n  smoothness: 0.05\n")
    cfg = load_config(ReconstructConfig(), path)
    assert cfg.model == "anny" and cfg.texture.size == 512 and cfg.sfs.smoothness == 0.05
    assert parse_override("fit.rho_id=1e-4") == {"fit": {"rho_id": "1e-4"}}  # YAML 1.1 keeps it a string
    assert apply_overrides(cfg, parse_override("fit.rho_id=1e-4")).fit.rho_id == 1e-4
    assert config_to_dict(cfg)["texture"]["size"] == 512


@pytest.mark.parametrize("overrides, words", [
    ({"nope": 1}, "unknown setting 'nope'"),
    ({"photometric": {"iterations": "many"}}, "photometric.iterations expects int"),
    ({"photometric": 3}, "is a section"),
    ({"texture": {"size": 3}}, "texture size must be within"),
])
def test_bad_overrides_are_usage_errors(overrides, words):
    with pytest.raises(UsageError, match=words):
        apply_overrides(ReconstructConfig(), overrides)


def test_bad_files(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_config(ReconstructConfig(), tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(ReconstructConfig(), tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UsageError, match="must be a mapping"):
        load_config(ReconstructConfig(), tmp_path / "list.yaml")
    with pytest.raises(UsageError, match="section.name=value"):
        parse_override("justakey")
