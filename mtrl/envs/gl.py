"""Offscreen OpenGL backend selection for MuJoCo rendering (no metaworld import here).

MuJoCo reads ``MUJOCO_GL`` once, when :mod:`mujoco` is first imported, so :func:`ensure_gl_backend` must run before
that import: :mod:`mtrl.envs.metaworld` calls it at the top, and so should any script that imports mujoco first.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings

_PACKAGES = {"osmesa": "libosmesa6", "egl": "libegl1"}


def _gpu_visible() -> bool:
    if os.path.exists("/dev/nvidia0"):
        return True
    torch = sys.modules.get("torch")  # only if already imported: importing torch here would cost seconds
    return bool(torch is not None and torch.cuda.is_available())


def ensure_gl_backend() -> None:
    """Pick an offscreen backend if the user has not: ``egl`` with a visible NVIDIA GPU, else ``osmesa`` (CPU).

    Sets ``MUJOCO_GL`` and ``PYOPENGL_PLATFORM`` (to match) only where unset; an explicit choice always wins.
    Has no effect on rendering if :mod:`mujoco` was already imported (a warning says so).
    """
    if "MUJOCO_GL" in os.environ:
        if os.environ["MUJOCO_GL"].lower() in _PACKAGES:
            os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"].lower())
        return
    backend = "egl" if _gpu_visible() else "osmesa"
    if "mujoco" in sys.modules:
        warnings.warn(
            f"ensure_gl_backend: mujoco was imported before MUJOCO_GL was set; setting MUJOCO_GL={backend} now "
            "has no effect on this process",
            stacklevel=2,
        )
    os.environ["MUJOCO_GL"] = backend
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)


def software_gl() -> bool:
    """Whether offscreen rendering runs on the CPU (osmesa, or egl without a GPU): then cheap settings pay off."""
    backend = os.environ.get("MUJOCO_GL", "").lower()
    return backend == "osmesa" or (backend == "egl" and not _gpu_visible())


@functools.cache
def check_gl_backend() -> str | None:
    """Try a tiny offscreen MuJoCo render; ``None`` if it works, else a one-line error naming the package to install.

    The result is cached for the process (the backend cannot change after mujoco is imported).
    """
    ensure_gl_backend()
    backend = os.environ.get("MUJOCO_GL", "").lower()
    try:
        import mujoco

        model = mujoco.MjModel.from_xml_string("<mujoco/>")
        renderer = mujoco.Renderer(model, height=8, width=8)
        try:
            renderer.update_scene(mujoco.MjData(model))
            renderer.render()
        finally:
            renderer.close()
    except Exception as exc:  # any failure (ImportError, AttributeError, mujoco.FatalError) means no offscreen GL
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        package = _PACKAGES.get(backend)
        if package is None:
            hint = "set MUJOCO_GL=osmesa (CPU, Debian package libosmesa6) or MUJOCO_GL=egl (GPU, libegl1)"
        else:
            hint = f"install the Debian package {package} (apt-get install {package})"
            hint += ", or try MUJOCO_GL=" + ("egl with a GPU" if backend == "osmesa" else "osmesa on CPU")
        return f"no offscreen OpenGL for MuJoCo with MUJOCO_GL={backend or '(unset)'} ({reason}); {hint}"
    return None
