"""The one digest check (gitbake.contract.digest) that .bread, reach, the store and a remote share."""

from __future__ import annotations

from gitbake.contract.digest import is_digest


def test_a_digest_is_exactly_64_lowercase_hex() -> None:
    good = "0123456789abcdef" * 4
    assert is_digest(good)
    for bad in (good[:-1], good + "0", good.upper(), good + "\n", "../" + good[3:], "", None, 7, good[:-1] + "g"):
        assert not is_digest(bad), bad
