"""The generator interface: registry, build, save/load (file and trainer checkpoint), errors."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from face3d.generator import (BUILTIN_GENERATORS, GENERATOR_FORMAT, Generator, GeneratorInput, GeneratorOutput,
                              _REGISTRY, available_generators, build_generator, generator_state, get_generator,
                              load_generator, register_generator, save_generator)
from face3d.training.checkpoint import save_checkpoint


@dataclass
class _TinyConfig:
    image_size: int = 8
    width: int = 3


class _Tiny(Generator):
    def __init__(self, config: _TinyConfig) -> None:
        super().__init__(config)
        self.conv = nn.Conv2d(3, config.width, 1)
        self.head = nn.Conv2d(config.width, 4, 1)

    def forward(self, inputs: GeneratorInput) -> GeneratorOutput:
        self.check_input(inputs)
        y = self.head(torch.relu(self.conv(inputs.image)))
        return GeneratorOutput(torch.sigmoid(y[:, :3]), torch.sigmoid(y[:, 3:]))


@pytest.fixture
def tiny():
    register_generator("tiny-test", _TinyConfig, summary="a test generator")(_Tiny)
    yield "tiny-test"
    _REGISTRY.pop("tiny-test", None)


def test_build_save_load_round_trip(tiny, tmp_path):
    g = build_generator(tiny, overrides={"width": 5})
    assert g.name == tiny and g.config.width == 5 and g.image_size == 8
    x = GeneratorInput(torch.rand(2, 3, 8, 8))
    path = save_generator(g, tmp_path / "sub" / "g.pt")
    assert not list((tmp_path / "sub").glob(".*"))          # no temporary file left behind
    state = torch.load(path, weights_only=True)
    assert state["format"] == GENERATOR_FORMAT and state["config"] == {"image_size": 8, "width": 5}
    h = load_generator(path)
    assert not h.training and h.config == g.config
    with torch.no_grad():
        assert torch.equal(g.eval()(x).image, h(x).image) and torch.equal(g(x).mask, h(x).mask)


def test_load_from_a_trainer_checkpoint(tiny, tmp_path):
    g = build_generator(tiny)
    save_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000003.pt",
                    {"step": 3, "modules": {"generator": g.state_dict(), "discriminator": {}},
                     "task": {"generator": generator_state(g)}})
    h = load_generator(tmp_path / "run")                    # the run folder is enough
    x = GeneratorInput(torch.rand(1, 3, 8, 8))
    with torch.no_grad():
        assert torch.equal(g.eval()(x).image, h(x).image)


def test_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match="unknown generator 'nope'"):
        get_generator("nope")
    with pytest.raises(FileNotFoundError):
        load_generator(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a generator file"):
        load_generator(tmp_path / "other.pt")
    path = save_generator(build_generator(tiny), tmp_path / "g.pt")
    with pytest.raises(ValueError, match="not 'cfrgan'"):
        load_generator(path, name="cfrgan")
    bad = torch.load(path, weights_only=True)
    bad["config"]["width"] = 7                              # the weights were made for width 3
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="do not fit"):
        load_generator(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="image must be"):
        build_generator(tiny)(GeneratorInput(torch.rand(1, 3, 9, 9)))
    with pytest.raises(ValueError, match="dataclass with an image_size"):
        register_generator("x", dict)
    with pytest.raises(ValueError, match="already registered"):
        @register_generator(tiny, _TinyConfig)
        class Other(_Tiny):
            pass


def test_every_builtin_generator_is_registered_with_a_trainer():
    names = available_generators()
    assert set(BUILTIN_GENERATORS) <= set(names)
    for name in BUILTIN_GENERATORS:
        entry = get_generator(name)
        assert entry.cls.name == name and entry.train is not None and entry.train_config is not None
        cfg = entry.train_config()
        assert cfg.trainer.out_dir == f"runs/{name}" and hasattr(cfg, "data")
