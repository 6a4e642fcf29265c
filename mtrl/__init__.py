"""mtrl: multi-task SAC with pluggable multi-task optimization combiners on Meta-World MT10/MT50."""

__version__ = "0.1.0"
