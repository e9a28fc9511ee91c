"""The identity of the built-in `tiny` model: the digest of its generated weights.

Kept apart from `gitbake/engine/tiny.py` so that commands that never touch a model (status, validate)
can compute keys without importing numpy or torch. `tests/test_engine_models.py` regenerates the weights
and fails if this pin does not match them; update both together.
"""

TINY_WEIGHTS_DIGEST = "16e39114971e89b43f69f414e313d9f62ef6e04d3e6d0ba7a566058baafe4f05"
