"""Rollout videos: one mp4 per task and episode, and small clips for TensorBoard.

Frame convention: the env autoresets inside ``step``, so the state an episode ends in is never rendered. An episode of
``T`` steps gives exactly ``T`` frames: frame ``t`` shows the state the policy acted on at step ``t`` (frame 0 is the
reset state). Its title bar reads ``"<task>  success: yes/no"``, where the flag turns ``yes`` from the step whose
transition succeeded onwards, so the last frame shows the episode's result (success at any step, as in evaluation).
"""

from __future__ import annotations

import functools
import inspect
import re
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from mtrl.envs.base import MultiTaskVecEnv

Policy = Callable[[np.ndarray], np.ndarray]
"""``policy(obs [K, obs]) -> actions [K, act]``, e.g. the agent's deterministic ``act``."""

TITLE_HEIGHT = 16
"""Pixels of the title bar added above each mp4 frame (frames grow from ``[H, W]`` to ``[H + 16, W]``)."""

_BAR = (32, 32, 32)
_YES, _NO = (90, 220, 100), (235, 90, 80)


class VideoError(RuntimeError):
    """Videos cannot be made (no offscreen OpenGL, env not built for rendering); the message is one line."""


def record_checkpoint(
    path: str, out: str, episodes: int, fps: int, tasks: list[str] | None, sim_seed: int | None
) -> tuple[Path, list[Path]]:
    """``mtrl record``: videos of a checkpoint's deterministic policy on its run's goals, into
    ``<out>/<run_name>/``; returns that folder and the files. ``sim_seed`` None: the run's evaluation seed.

    :raises ConfigError: a task name the run does not have.
    """
    from mtrl.config import ConfigError
    from mtrl.envs import eval_seed, make_env
    from mtrl.envs.gl import ensure_gl_backend
    from mtrl.runs.restore import load_policy

    ensure_gl_backend()
    cfg, act, task_names, _ = load_policy(path, "cpu")
    unknown = [t for t in tasks or [] if t not in task_names]
    if unknown:
        raise ConfigError(f"--tasks: unknown task {unknown[0]!r}; this run has: {', '.join(task_names)}")
    seed = eval_seed(cfg.seed) if sim_seed is None else sim_seed
    folder = Path(out) / cfg.run_name
    env = make_env(cfg.env, cfg.seed, evaluation=True, render=True, sim_seed=seed)
    try:
        paths = record(act, env, folder, episodes, fps, tasks=tasks)
    finally:
        env.close()
    return folder, paths


def record(
    policy: Policy,
    env: MultiTaskVecEnv,
    out_dir: Path,
    episodes: int = 1,
    fps: int = 30,
    *,
    tasks: list[str] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Roll out ``policy`` on all tasks in parallel and write ``out_dir/<task>__ep<i>.mp4`` per selected task.

    Runs until every selected task has finished ``episodes`` episodes (an episode ends on terminated or truncated);
    episode ``i`` counts from 0. Each video has one frame per step (see the module docstring) with a title bar.

    :param policy: maps observations ``[K, obs]`` to actions ``[K, act]``.
    :param env: a vector env built with ``render=True`` (Meta-World: also ``evaluation=True``).
    :param out_dir: created if missing.
    :param episodes: episodes per task.
    :param fps: frames per second of the mp4 files.
    :param tasks: task names to record (default: all); the others still step but are not rendered.
    :param progress: show a progress bar over episodes.
    :returns: the written paths, ordered by task then episode.
    :raises VideoError: no offscreen OpenGL backend, or the env cannot render.
    """
    if episodes < 1:
        raise ValueError(f"episodes: got {episodes}, expected a positive integer")
    indices = _select(env, tasks)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writers: dict[int, object] = {}  # open writer per task, for its current episode
    written: dict[tuple[int, int], Path] = {}  # (task index, episode) -> path

    def on_frame(k: int, episode: int, frame: np.ndarray, success: bool) -> None:
        if k not in writers:
            written[k, episode] = out_dir / f"{_safe(env.task_names[k])}__ep{episode}.mp4"
            writers[k] = _writer(written[k, episode], fps)
        writers[k].append_data(title_frame(frame, env.task_names[k], success))  # type: ignore[attr-defined]

    def on_episode_end(k: int, episode: int, success: bool) -> None:
        writers.pop(k).close()  # type: ignore[attr-defined]

    try:
        _rollout(policy, env, indices, episodes, on_frame, on_episode_end, progress, "record")
    finally:
        for writer in writers.values():
            writer.close()  # type: ignore[attr-defined]
    return [written[key] for key in sorted(written)]


def frames_for_tensorboard(
    policy: Policy,
    env: MultiTaskVecEnv,
    *,
    size: int = 64,
    stride: int = 2,
    tasks: list[str] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """One episode per selected task, downscaled, as ``[N, T, 3, size, W']`` uint8 for ``SummaryWriter.add_video``.

    Keeps every ``stride``-th frame; ``W' = size * W / H`` (square frames stay square). Episodes shorter than the
    longest repeat their last frame. A 3-pixel strip on top turns green once the episode has succeeded.

    :param tasks: task names (default: all, in env order; row ``n`` of the result is the ``n``-th selected task).
    """
    if size < 4 or stride < 1:
        raise ValueError(f"size/stride: got {size}/{stride}, expected size >= 4 and stride >= 1")
    indices = _select(env, tasks)
    clips: dict[int, list[np.ndarray]] = {k: [] for k in indices}
    step = dict.fromkeys(indices, 0)

    def on_frame(k: int, episode: int, frame: np.ndarray, success: bool) -> None:
        if step[k] % stride == 0:
            clips[k].append(_small(frame, size, success))
        step[k] += 1

    _rollout(policy, env, indices, 1, on_frame, lambda *_: None, progress, "tensorboard video")
    length = max(len(c) for c in clips.values())
    out = np.stack([np.stack(c + [c[-1]] * (length - len(c))) for c in clips.values()])  # [N, T, H, W, 3]
    return np.ascontiguousarray(out.transpose(0, 1, 4, 2, 3))  # [N, T, 3, H, W]


def title_frame(frame: np.ndarray, task: str, success: bool) -> np.ndarray:
    """``frame [H, W, 3]`` with a ``TITLE_HEIGHT``-pixel bar on top reading ``"<task>  success: yes/no"``."""
    height, width = frame.shape[:2]
    canvas = Image.new("RGB", (width, height + TITLE_HEIGHT), _BAR)
    canvas.paste(Image.fromarray(np.ascontiguousarray(frame[..., :3], dtype=np.uint8)), (0, TITLE_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    label, flag = f"{task}  success: ", "yes" if success else "no"
    font = _font_fitting(draw, label + "yes", width - 4)
    draw.text((2, 2), label, fill=(235, 235, 235), font=font)
    draw.text((2 + draw.textlength(label, font=font), 2), flag, fill=_YES if success else _NO, font=font)
    return np.asarray(canvas)


# ----------------------------------------------------------------------------------------------------- internals


def _rollout(
    policy: Policy,
    env: MultiTaskVecEnv,
    indices: list[int],
    episodes: int,
    on_frame: Callable[[int, int, np.ndarray, bool], None],
    on_episode_end: Callable[[int, int, bool], None],
    progress: bool,
    desc: str,
) -> None:
    """Step all tasks until each selected one has finished ``episodes`` episodes, rendering the selected ones."""
    render = _renderer(env)
    obs = env.reset()
    finished = dict.fromkeys(indices, 0)
    succeeded = dict.fromkeys(indices, False)
    with tqdm(total=episodes * len(indices), unit="ep", desc=desc, disable=not progress, leave=False) as bar:
        while any(n < episodes for n in finished.values()):
            active = [k for k in indices if finished[k] < episodes]
            frames = render(active)
            result = env.step(np.asarray(policy(obs)))
            for k, frame in zip(active, frames):
                succeeded[k] = succeeded[k] or bool(result.success[k])
                on_frame(k, finished[k], frame, succeeded[k])
                if result.terminated[k] or result.truncated[k]:
                    on_episode_end(k, finished[k], succeeded[k])
                    finished[k] += 1
                    succeeded[k] = False
                    bar.update(1)
            obs = result.obs


def _renderer(env: MultiTaskVecEnv) -> Callable[[list[int]], list[np.ndarray]]:
    """``render(indices) -> frames``, rendering only those tasks where the env allows it; checks GL first."""
    if getattr(env, "needs_gl", False):
        from mtrl.envs.gl import check_gl_backend

        message = check_gl_backend()
        if message is not None:
            raise VideoError(message)
    selective = "tasks" in inspect.signature(env.render).parameters

    def render(indices: list[int]) -> list[np.ndarray]:
        try:
            if selective:
                return env.render(tasks=indices)  # type: ignore[call-arg]
            frames = env.render()
        except Exception as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise VideoError(f"env.render() failed ({reason}); build the env with render=True") from exc
        return [frames[k] for k in indices]

    return render


def _select(env: MultiTaskVecEnv, tasks: Iterable[str] | None) -> list[int]:
    if tasks is None:
        return list(range(env.num_tasks))
    indices = []
    for name in tasks:
        if name not in env.task_names:
            raise ValueError(f"tasks: unknown task '{name}'; valid: {', '.join(env.task_names)}")
        indices.append(env.task_names.index(name))
    if not indices:
        raise ValueError("tasks: empty selection; pass None to record every task")
    return sorted(set(indices))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


@functools.cache
def _codec() -> str:
    """libx264 where the bundled ffmpeg has it (imageio-ffmpeg's does), else mpeg4."""
    try:
        import imageio_ffmpeg

        out = subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30
        ).stdout
    except Exception as exc:  # no ffmpeg at all: imageio would fail to write too
        raise VideoError(f"no ffmpeg for mp4 output ({exc}); pip install imageio-ffmpeg") from exc
    return "libx264" if "libx264" in out else "mpeg4"


def _writer(path: Path, fps: int) -> object:
    import imageio.v2 as imageio

    return imageio.get_writer(
        path,
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec=_codec(),
        pixelformat="yuv420p",
        macro_block_size=2,  # yuv420p needs even sides; 16 (the default) would rescale most sizes
        ffmpeg_log_level="error",
    )


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _font_fitting(draw: ImageDraw.ImageDraw, text: str, width: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for size in (12, 11, 10, 9, 8):
        if draw.textlength(text, font=_font(size)) <= width:
            return _font(size)
    return _font(8)


def _small(frame: np.ndarray, size: int, success: bool) -> np.ndarray:
    height, width = frame.shape[:2]
    image = Image.fromarray(np.ascontiguousarray(frame[..., :3], dtype=np.uint8))
    small = np.array(image.resize((max(1, round(size * width / height)), size), Image.Resampling.BILINEAR))
    small[:3] = _YES if success else _BAR
    return small
