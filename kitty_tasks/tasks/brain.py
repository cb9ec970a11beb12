"""Brain command task: plan print jobs onto printers (longest job first, to the least loaded)."""

from __future__ import annotations

import heapq
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kitty_tasks.runtime.application import app
from kitty_tasks.runtime.task import RETRY_ANY

__all__ = ["BrainCommand", "brain_command", "plan_jobs"]


class Job(BaseModel):
    """A print job: id, hours it takes, and the material it needs."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    hours: float = Field(gt=0, le=10_000)
    material: str | None = None


class Printer(BaseModel):
    """A printer and the materials it has loaded (none listed: any)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    materials: list[str] = Field(default_factory=list)


class BrainCommand(BaseModel):
    """A command for the brain; ``plan_jobs`` is the one it knows today."""

    model_config = ConfigDict(extra="forbid")

    command: Literal["plan_jobs"]
    jobs: list[Job] = Field(min_length=1, max_length=10_000)
    printers: list[Printer] = Field(min_length=1, max_length=1_000)

    @model_validator(mode="after")
    def _every_job_has_a_printer(self) -> BrainCommand:
        for job in self.jobs:
            if not any(_can_print(p, job) for p in self.printers):
                raise ValueError(f"no printer has material {job.material!r} for job {job.id!r}")
        return self


def _can_print(printer: Printer, job: Job) -> bool:
    return job.material is None or not printer.materials or job.material in printer.materials


def plan_jobs(command: BrainCommand) -> dict[str, Any]:
    """Assign each job, longest first, to the compatible printer that frees up first."""
    load = {p.id: 0.0 for p in command.printers}
    plan: dict[str, list[str]] = {p.id: [] for p in command.printers}
    for job in sorted(command.jobs, key=lambda j: (-j.hours, j.id)):
        candidates = [(load[p.id], p.id) for p in command.printers if _can_print(p, job)]
        _, chosen = heapq.nsmallest(1, candidates)[0]
        plan[chosen].append(job.id)
        load[chosen] += job.hours
    return {"plan": plan, "hours": load, "makespan_hours": max(load.values())}


@app.task(name="brain.command", autoretry_for=RETRY_ANY)
def brain_command(**params: Any) -> dict[str, Any]:
    """Run one brain command; invalid commands are permanent failures."""
    return plan_jobs(BrainCommand.model_validate(params))
