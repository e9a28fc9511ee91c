"""gitbake: `git bake` bakes prompts into model weights and versions every model in git."""

__version__ = "0.1.0"

__all__ = ["__version__"]
