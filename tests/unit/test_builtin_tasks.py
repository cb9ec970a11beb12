"""The built-in tasks' real work: BM25 ranking, STL meshes, job planning."""

from __future__ import annotations

import pytest

from kitty_tasks.core.errors import InvalidInput, Permanent
from kitty_tasks.tasks.brain import BrainCommand, plan_jobs
from kitty_tasks.tasks.cad import CadRequest, cad_generate
from kitty_tasks.tasks.corpus import Document
from kitty_tasks.tasks.research import rank_documents, research_paper

DOCS = [
    Document(id="a", title="Nozzle clogs", text="clog clog extruder current"),
    Document(id="b", title="Bed levelling", text="probe mesh first layer"),
    Document(id="c", title="Clogs and warping", text="a clog can happen while warping"),
]


def test_bm25_ranks_more_relevant_documents_first_and_drops_unrelated():
    ranked = rank_documents("nozzle clog", DOCS, 10)
    assert [r["id"] for r in ranked] == ["a", "c"]
    assert ranked[0]["score"] > ranked[1]["score"] > 0


def test_research_paper_searches_given_documents_and_limits_results():
    result = research_paper.run("clog", max_results=1, documents=[d.model_dump() for d in DOCS])
    assert result["searched"] == 3
    assert [r["id"] for r in result["results"]] == ["a"]


def test_research_paper_rejects_bad_input():
    with pytest.raises(ValueError, match="max_results"):
        research_paper.run("clog", max_results=0)


def test_box_mesh_is_closed_and_sized():
    mesh = cad_generate.run(primitive="box", width=2, depth=3, height=4)
    assert (mesh["facets"], mesh["vertices"]) == (12, 8)
    assert mesh["bounding_box"] == {"min": [0.0, 0.0, 0.0], "max": [2.0, 3.0, 4.0]}
    assert mesh["stl"].count("endfacet") == 12


def test_cylinder_and_sphere_counts_follow_segments():
    cylinder = cad_generate.run(primitive="cylinder", radius=5, height=10, segments=16)
    assert (cylinder["facets"], cylinder["vertices"]) == (64, 34)
    sphere = cad_generate.run(primitive="sphere", radius=5, segments=8)
    # 8 slices x 4 stacks: poles are shared, two triangles per quad except at the poles
    assert (sphere["facets"], sphere["vertices"]) == (48, 26)
    assert sphere["bounding_box"]["max"][2] == pytest.approx(5.0)


def test_cad_rejects_unknown_primitive_and_bad_sizes():
    with pytest.raises(ValueError, match="primitive"):
        CadRequest.model_validate({"primitive": "torus"})
    with pytest.raises(ValueError, match="greater than 0"):
        CadRequest.model_validate({"primitive": "box", "width": 0})


def test_plan_jobs_balances_by_longest_job_first():
    command = BrainCommand.model_validate(
        {
            "command": "plan_jobs",
            "jobs": [{"id": j, "hours": h} for j, h in [("a", 5), ("b", 4), ("c", 3), ("d", 3)]],
            "printers": [{"id": "p1"}, {"id": "p2"}],
        }
    )
    plan = plan_jobs(command)
    assert plan["makespan_hours"] == 8
    assert sorted(plan["hours"].values()) == [7, 8]


def test_plan_jobs_refuses_a_job_no_printer_can_take():
    with pytest.raises(ValueError, match="no printer has material 'tpu'"):
        BrainCommand.model_validate(
            {
                "command": "plan_jobs",
                "jobs": [{"id": "a", "hours": 1, "material": "tpu"}],
                "printers": [{"id": "p1", "materials": ["pla"]}],
            }
        )


def test_invalid_input_is_permanent():
    # KittyTask dead-letters Permanent errors at once; callers may still catch ValueError.
    assert issubclass(InvalidInput, Permanent)
    assert issubclass(InvalidInput, ValueError)
