"""Rollout videos: mp4 files per task and episode (toy env and Meta-World), TensorBoard clips, GL selection."""

import warnings

from mtrl.envs.gl import ensure_gl_backend

ensure_gl_backend()  # before mujoco is imported

import imageio.v3 as iio  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mtrl.envs.gl as gl  # noqa: E402
from mtrl.envs.toy import ToyReachEnv  # noqa: E402
from mtrl.video import TITLE_HEIGHT, VideoError, frames_for_tensorboard, record, title_frame  # noqa: E402


def _toward_goal(env: ToyReachEnv):
    return lambda obs: np.clip(5 * (env.goals - obs), -1, 1)


def test_toy_record_writes_one_readable_mp4_per_task_and_episode(tmp_path):
    env = ToyReachEnv(num_tasks=3, max_episode_steps=12, render=True)
    out = tmp_path / "videos"
    paths = record(_toward_goal(env), env, out, episodes=2, tasks=["reach-2", "reach-0"], progress=False)
    names = ["reach-0__ep0.mp4", "reach-0__ep1.mp4", "reach-2__ep0.mp4", "reach-2__ep1.mp4"]
    assert [p.name for p in paths] == names  # ordered by task (env order), then episode; unselected task skipped
    assert sorted(p.name for p in out.iterdir()) == names
    for path in paths:
        frames = iio.imread(path)
        assert frames.shape == (12, 128 + TITLE_HEIGHT, 128, 3)  # one frame per step, no terminal frame
    last = iio.imread(paths[0])[-1]
    bar = last[:TITLE_HEIGHT].astype(int)
    greenish = (bar[..., 1] > 150) & (bar[..., 0] < 150) & (bar[..., 2] < 160)
    assert greenish.sum() > 5  # "success: yes" in green on the last frame of a solved episode


def test_record_all_tasks_by_default(tmp_path):
    env = ToyReachEnv(num_tasks=2, max_episode_steps=4, render=True)
    paths = record(lambda obs: np.zeros_like(obs), env, tmp_path, progress=False)
    assert [p.name for p in paths] == ["reach-0__ep0.mp4", "reach-1__ep0.mp4"]
    assert iio.imread(paths[1]).shape[0] == 4


def test_record_rejects_unknown_task_and_unrenderable_env(tmp_path):
    env = ToyReachEnv(num_tasks=2, render=True)
    with pytest.raises(ValueError, match="unknown task 'reach-9'; valid: reach-0, reach-1"):
        record(lambda obs: obs, env, tmp_path, tasks=["reach-9"])
    with pytest.raises(VideoError, match="render=True"):
        record(lambda obs: obs, ToyReachEnv(num_tasks=2), tmp_path, progress=False)


def test_missing_gl_backend_is_a_one_line_video_error(tmp_path, monkeypatch):
    message = "no offscreen OpenGL for MuJoCo with MUJOCO_GL=osmesa (...); install the Debian package libosmesa6"
    monkeypatch.setattr(gl, "check_gl_backend", lambda: message)
    env = ToyReachEnv(num_tasks=1, render=True)
    env.needs_gl = True  # as a Meta-World env built with render=True
    with pytest.raises(VideoError) as err:
        record(lambda obs: obs, env, tmp_path, progress=False)
    assert str(err.value) == message


def test_title_frame_marks_success():
    frame = np.zeros((32, 96, 3), dtype=np.uint8)
    no, yes = title_frame(frame, "reach-0", False), title_frame(frame, "reach-0", True)
    assert no.shape == yes.shape == (32 + TITLE_HEIGHT, 96, 3) and no.dtype == np.uint8
    np.testing.assert_array_equal(no[TITLE_HEIGHT:], frame)
    assert not np.array_equal(no[:TITLE_HEIGHT], yes[:TITLE_HEIGHT])


def test_frames_for_tensorboard_shape():
    env = ToyReachEnv(num_tasks=3, max_episode_steps=9, render=True)
    clips = frames_for_tensorboard(_toward_goal(env), env, size=32, stride=2)
    assert clips.shape == (3, 5, 3, 32, 32) and clips.dtype == np.uint8  # [N, T, C, H, W], T = ceil(9 / 2)
    one = frames_for_tensorboard(_toward_goal(env), env, size=32, stride=1, tasks=["reach-1"])
    assert one.shape == (1, 9, 3, 32, 32)


def test_ensure_gl_backend_picks_by_gpu_and_respects_the_user(monkeypatch):
    for gpu, backend in ((True, "egl"), (False, "osmesa")):
        monkeypatch.delenv("MUJOCO_GL", raising=False)
        monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
        monkeypatch.setattr(gl, "_gpu_visible", lambda gpu=gpu: gpu)
        with warnings.catch_warnings():  # "mujoco was imported before MUJOCO_GL was set", when it was
            warnings.simplefilter("ignore")
            gl.ensure_gl_backend()
        assert gl.os.environ["MUJOCO_GL"] == gl.os.environ["PYOPENGL_PLATFORM"] == backend
    monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.delenv("PYOPENGL_PLATFORM")
    gl.ensure_gl_backend()
    assert gl.os.environ["MUJOCO_GL"] == gl.os.environ["PYOPENGL_PLATFORM"] == "egl"


def test_metaworld_mt1_video(tmp_path):
    problem = gl.check_gl_backend()
    if problem is not None:
        pytest.skip(f"no offscreen GL backend: {problem}")
    from mtrl.config import EnvConfig
    from mtrl.envs.metaworld import make_metaworld

    cfg = EnvConfig(benchmark="MT1-reach-v3", max_episode_steps=10)
    env = make_metaworld(cfg, seed=0, evaluation=True, render=True)
    paths = record(lambda obs: np.zeros((1, 4)), env, tmp_path, progress=False)  # still hand: no success, 10 steps
    assert [p.name for p in paths] == ["reach-v3__ep0.mp4"]
    frames = iio.imread(paths[0])
    assert frames.shape == (10, 256 + TITLE_HEIGHT, 256, 3)
    assert frames[0, TITLE_HEIGHT:].std() > 10  # a scene, not a blank image
    env.close()
