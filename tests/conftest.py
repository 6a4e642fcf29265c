import os

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "osmesa")  # headless rendering on CPU machines (egl is chosen where a GPU exists)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default="cpu",
        help="torch device of the tests marked 'device' (cpu or cuda); scripts/gpu_check.sh runs them with cuda",
    )


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device given with --device (cpu by default); skips when it is cuda and torch sees no GPU."""
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("--device cuda, but torch sees no CUDA device")
    return torch.device(name)
