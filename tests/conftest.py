import os

os.environ.setdefault("MUJOCO_GL", "osmesa")  # headless rendering on CPU machines (egl is chosen where a GPU exists)
