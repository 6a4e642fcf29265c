import os

# before torch loads (libgomp reads it once): as mtrl sets it for itself (mtrl/__init__.py), OpenMP threads sleep
# when idle instead of spinning, which on 2 cores tripled the time of in-process training tests
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if "PYTEST_XDIST_WORKER" in os.environ:  # one test process per core (pytest -n): one torch thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

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
