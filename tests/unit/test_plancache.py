"""The cached plan's JSON form: every field of a Plan survives the round trip, prompts in their order."""

from __future__ import annotations

from gitbake.errors import Issue
from gitbake.repo.modelversion import ModelVersion
from gitbake.repo.plan import BakePlan, DatasetPlan, Parent, Plan, PromptPlan, TargetPlan
from gitbake.repo.plancache import plan_from_json, plan_to_json


def test_a_plan_survives_its_json_form() -> None:
    plan = Plan(
        parent=Parent(ModelVersion("tiny", ("a" * 64, "b" * 64), "m_0123"), {"base": {"kind": "tiny"}}, True),
        prompts={
            "teacher": PromptPlan("teacher", "1" * 64, "teacher_1", {"messages": [{"role": "system"}]}, "input.yml"),
            "student": PromptPlan("student", "2" * 64, "student_2", {"messages": []}, "implied"),
        },
        target=TargetPlan("t", "t_3", "3" * 64, "4" * 64, "teacher", "student", {"max_tokens": 32}),
        bake=BakePlan(
            "b", "b_5", "5" * 64, {"epochs": 2}, [DatasetPlan("t", "t_3", "3" * 64, 0.5, "lineage", "c" * 40)]
        ),
        warnings=[Issue("input.yml", 3, 5, "TARGET.x", "odd", "fix it")],
    )
    back = plan_from_json(plan_to_json(plan))
    assert back == plan and list(back.prompts) == ["teacher", "student"]
    empty = Plan(parent=Parent(ModelVersion("tiny"), {}))
    assert plan_from_json(plan_to_json(empty)) == empty
