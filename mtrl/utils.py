"""Process-level settings: the torch device, glibc's memory behaviour, and random-generator states across devices."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import sys

import torch

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit on 64-bit (HEAP_MAX_SIZE / 2)
_TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 32 MiB for reuse instead of returning them to the OS.

    A CPU update allocates and frees a few hundred activation and gradient tensors of about 2 MiB (batch x 400
    floats). glibc serves blocks that large with fresh ``mmap`` calls and unmaps them on free, so every
    allocation page-faults its memory in again: about 2,750 page faults per MT10 update on a 2-core machine, 234 with
    this setting, and 158 against 143 ms per update (``scripts/bench_process_settings.py``). Raising the mmap and
    trim thresholds lets those blocks be reused from the heap. Numerics are unchanged; the process keeps up to the
    thresholds' worth of freed memory.

    :return: whether the setting was applied (False off glibc Linux, where nothing is done).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cuda`` without one raises a one-line
    :class:`~mtrl.config.ConfigError` naming the device (not a checkpoint or config) as the problem."""
    from mtrl.config import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: got 'cuda', but torch sees no CUDA device here; expected cpu or auto")
    return torch.device(name)


def set_matmul_precision(precision: str) -> None:
    """Let CUDA float32 matmuls and convolutions use TensorFloat-32 for ``tf32`` (and not otherwise). Process-wide."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def set_generator_state(generator: torch.Generator, state: torch.Tensor) -> None:
    """Restore ``generator`` from a saved ``get_state()``, whatever device wrote it.

    A state saved by a generator of the same device type (CPU: 5056-byte Mersenne Twister, CUDA: 16-byte Philox
    seed and offset) is restored exactly. One from the other type cannot be (the streams differ anyway): the
    generator is then seeded from a hash of the saved state, so a checkpoint written on a GPU still loads, and
    deterministically, on a CPU and the reverse.
    """
    state = state.detach().to("cpu", torch.uint8)
    if state.numel() == generator.get_state().numel():
        generator.set_state(state)
        return
    digest = hashlib.blake2b(state.numpy().tobytes(), digest_size=8).digest()
    generator.manual_seed(int.from_bytes(digest, "little") >> 1)


def free_memory(device: torch.device) -> int | None:
    """Bytes free for new allocations on ``device``: CUDA's free memory, or on a CPU the kernel's ``MemAvailable``
    (and the cgroup's limit less its usage where one is set); None where it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free: int | None = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    try:  # a container's memory limit (cgroup v2)
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read())
        if limit != "max" and free is not None:
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free
