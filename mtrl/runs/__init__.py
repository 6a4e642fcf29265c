"""A run on disk: its directory (:mod:`~mtrl.runs.rundir`), checkpoint units (:mod:`~mtrl.runs.checkpoint`), the
agent restored from one (:mod:`~mtrl.runs.restore`), what it writes to TensorBoard (:mod:`~mtrl.runs.tensorboard`)
and its logged scalars and final success (:mod:`~mtrl.runs.scalars`).

Below the training loop, evaluation and comparison, which all read runs; above the agent, which it saves.
"""
