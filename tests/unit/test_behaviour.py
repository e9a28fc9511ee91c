"""The behaviour check's criteria (gitbake/engine/behaviour.py) and the options of `eval` that judge it
(gitbake/workflow/behaviourcheck.py): matching, language identification, rates, and bad input."""

from __future__ import annotations

import sys

import pytest

from gitbake.engine.behaviour import Behaviour, Rate, behaviour, known_languages, language
from gitbake.errors import EXIT_USAGE, UsageError
from gitbake.workflow.behaviourcheck import Thresholds, request

FRENCH = [
    "La capitale de la France est Paris, une ville magnifique au bord de la Seine.",
    "Pour faire du thé, faites bouillir de l'eau et laissez infuser les feuilles quelques minutes.",
]
ENGLISH = [
    "The capital of France is Paris, a beautiful city on the river Seine.",
    "To make tea, boil some water and let the leaves steep for a few minutes.",
]


def test_expect_is_searched_anywhere_in_the_answer_with_the_patterns_own_flags() -> None:
    b = behaviour(r"\bParis\b", None)
    assert b.shows("The capital is Paris.") and not b.shows("Parisian cafés") and not b.shows("paris")
    assert behaviour("(?i)^arr", None).shows("ARRR, matey") and not behaviour("^arr", None).shows("ARRR")
    assert b.rate(["Paris", "Lyon", "to Paris", ""]) == Rate(2, 4)


def test_rate_is_the_share_shown_and_zero_when_nothing_was_asked() -> None:
    assert Rate(3, 4).rate == 0.75 and Rate(0, 0).rate == 0.0
    assert Rate(1, 2).as_json() == {"shown": 1, "total": 2, "rate": 0.5}


def test_language_tells_french_from_english_and_the_same_text_always_alike() -> None:
    assert [language(t) for t in FRENCH] == ["fr", "fr"]
    assert [language(t) for t in ENGLISH] == ["en", "en"]
    short = "Oui, bien sûr."  # langdetect samples at random: seeded, a short text gets one answer
    assert len({language(short) for _ in range(5)}) == 1
    assert language("") is None and language("12345 !!! ...") is None  # nothing to go on: not any language


def test_lang_rate_counts_answers_in_that_language() -> None:
    fr = behaviour(None, "fr")
    assert fr.rate(FRENCH + ENGLISH) == Rate(2, 4)
    assert behaviour(None, "EN").lang == "en"  # codes are case-insensitive


def test_both_criteria_must_hold() -> None:
    b = behaviour("Paris", "fr")
    assert [b.shows(t) for t in FRENCH + ENGLISH] == [True, False, False, False]
    assert b.describe() == "/Paris/ and language fr"
    assert b.as_json() == {"expect": "Paris", "lang": "fr"}
    assert Behaviour().shows("anything")  # no criterion: everything shows it (behaviour() refuses this)


def test_an_invalid_regex_names_its_position_and_exits_2() -> None:
    with pytest.raises(UsageError) as err:
        behaviour("ab(c", None)
    assert err.value.exit_code == EXIT_USAGE
    assert "--expect 'ab(c'" in err.value.message and "at position 2" in err.value.message
    assert err.value.hint and "(?i)" in err.value.hint


def test_an_unknown_language_code_lists_where_to_find_the_codes() -> None:
    with pytest.raises(UsageError) as err:
        behaviour(None, "french")
    assert err.value.exit_code == EXIT_USAGE and "--lang 'french'" in err.value.message
    assert err.value.hint and "github.com/Mimino666/langdetect" in err.value.hint and " fr," in err.value.hint
    assert {"en", "fr", "de", "zh-cn"} <= set(known_languages())


def test_without_langdetect_lang_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "langdetect" or m.startswith("langdetect.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "langdetect", None)  # what an absent package looks like to import
    with pytest.raises(UsageError) as err:
        behaviour(None, "fr")
    assert err.value.hint == "pip install 'gitbake[lang]'"
    assert behaviour("Paris", None).shows("Paris")  # --expect alone does not need it


def test_request_checks_the_options_before_anything_runs() -> None:
    assert request(None, None).behaviour is None  # the KL eval
    r = request("x", None, 0.8, None, "main")
    assert r.behaviour is not None and r.thresholds == Thresholds(0.8, None) and r.questions_from == "main"
    bad = [
        ((None, "fr", 1.5, None), "--min 1.5: a rate is between 0 and 1"),
        ((None, "fr", None, -0.1), "--max -0.1: a rate is between 0 and 1"),
        ((None, "fr", 0.9, 0.1), "--min 0.9 is above --max 0.1"),
        ((None, None, 0.8, None), "--min/--max judge a behaviour's rate, and no behaviour was given"),
        ((None, None, None, None, "main"), "--questions picks the questions of a behaviour check"),
    ]
    for args, message in bad:
        with pytest.raises(UsageError) as err:
            request(*args)  # type: ignore[arg-type]
        assert err.value.exit_code == EXIT_USAGE and message in err.value.message and err.value.hint, args


def test_thresholds_pass_within_their_bounds() -> None:
    assert Thresholds(0.8).passes(0.8) and not Thresholds(0.8).passes(0.79)
    assert Thresholds(None, 0.2).passes(0.0) and not Thresholds(None, 0.2).passes(0.5)
    assert Thresholds(0.2, 0.6).passes(0.5) and not Thresholds(0.2, 0.6).passes(0.7)
    assert Thresholds(0.8, None).describe() == ">= 0.8 (--min)"
