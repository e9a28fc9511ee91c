"""The identity of the built-in `tiny` model: the digest of its generated weights.

Kept apart from `gitbake/engine/tiny.py` so that commands that never touch a model (status, validate)
can compute keys without importing numpy or torch. `tests/func/test_engine_models.py` regenerates the weights
and fails if this pin does not match them; update both together.
"""

TINY_WEIGHTS_DIGEST = "26331e82b4fa48a65621e16c94c5eb494b98e645300d2b7a15e00b5f61876abc"
