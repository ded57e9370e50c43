"""registry-mirror: a pull-through cache for container registries."""

__version__ = "0.1.0"

__all__ = ["__version__"]
