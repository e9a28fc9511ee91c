"""The behaviour check of `git bake eval --expect REGEX --lang CODE`: does an answer show the behaviour?

An answer shows it when it matches every criterion given: the regular expression somewhere in it
(`re.search`; flags such as `(?i)` go in the pattern), and its language, as langdetect identifies it,
being CODE. langdetect (the `lang` extra) is offline, and seeded here so the same text always gets the
same language. Nothing here imports the ML stack or langdetect at import time: the criteria are checked
before a model is loaded, and the unit tests run without torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gitbake.errors import UsageError

LANG_EXTRA = "pip install 'gitbake[lang]'"
LANG_CODES_URL = "https://github.com/Mimino666/langdetect#languages"


@dataclass(frozen=True)
class Rate:
    """How many of `total` answers showed the behaviour."""

    shown: int
    total: int

    @property
    def rate(self) -> float:
        return self.shown / self.total if self.total else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"shown": self.shown, "total": self.total, "rate": self.rate}


@dataclass(frozen=True)
class Behaviour:
    """What an answer must show: a pattern, a language, or both. Build it with `behaviour()`."""

    expect: re.Pattern[str] | None = None
    lang: str | None = None

    def shows(self, answer: str) -> bool:
        if self.expect is not None and self.expect.search(answer) is None:
            return False
        return self.lang is None or language(answer) == self.lang

    def rate(self, answers: Iterable[str]) -> Rate:
        marks = [self.shows(a) for a in answers]
        return Rate(sum(marks), len(marks))

    def describe(self) -> str:
        parts = ([f"/{self.expect.pattern}/"] if self.expect is not None else []) + (
            [f"language {self.lang}"] if self.lang else []
        )
        return " and ".join(parts)

    def as_json(self) -> dict[str, Any]:
        return {"expect": self.expect.pattern if self.expect is not None else None, "lang": self.lang}


def behaviour(expect: str | None, lang: str | None) -> Behaviour:
    """The criteria, checked: a regex that compiles, a language code langdetect knows. UsageError
    (exit 2) naming the option and the fix otherwise; at least one of them is required."""
    if expect is None and lang is None:
        raise UsageError(
            "no behaviour to check: give --expect REGEX, --lang CODE or both",
            "for example: git bake eval --lang fr --min 0.8",
        )
    return Behaviour(compile_expect(expect) if expect is not None else None, check_lang(lang) if lang else None)


def compile_expect(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        raise UsageError(
            f"--expect {pattern!r}: not a valid regular expression{where}: {exc.msg}",
            "fix the pattern (Python's re syntax; quote it for the shell, e.g. --expect '(?i)bonjour')",
        ) from None


def known_languages() -> list[str]:
    """The codes langdetect has a profile for (ISO 639-1, plus zh-cn and zh-tw), without loading them."""
    detector_factory = _langdetect_factory()
    return sorted(os.listdir(detector_factory.PROFILES_DIRECTORY))


def check_lang(code: str) -> str:
    code = code.strip().lower()
    known = known_languages()
    if code not in known:
        raise UsageError(
            f"--lang {code!r}: not a language langdetect knows",
            f"use one of its codes ({LANG_CODES_URL}): {', '.join(known)}",
        )
    return code


def language(text: str) -> str | None:
    """langdetect's language of `text`, or None when it has nothing to go on (no letters)."""
    detector_factory = _langdetect_factory()
    from langdetect import detect
    from langdetect.lang_detect_exception import LangDetectException

    # a fixed seed: langdetect samples n-grams at random, and the same answer must get the same language
    detector_factory.DetectorFactory.seed = 0
    try:
        found: str = detect(text)
    except LangDetectException:
        return None
    return found


def _langdetect_factory() -> Any:
    try:
        from langdetect import detector_factory
    except ImportError:
        raise UsageError("--lang needs langdetect, which is not installed", LANG_EXTRA) from None
    return detector_factory
