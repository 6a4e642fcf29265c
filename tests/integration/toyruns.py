"""Shared settings of the short toy-env training runs in the integration tests (seconds on a CPU)."""

TINY = {
    "total_steps": 300,
    "warmup_steps": 100,
    "eval_interval": 150,
    "eval_episodes": 2,
    "log_interval": 50,
    "checkpoint_interval": 100,
    "agent.actor.hidden_dim": 32,
    "agent.critic.hidden_dim": 32,
    "buffer.batch_size": 32,
    "env.max_episode_steps": 20,
    "device": "cpu",
}
