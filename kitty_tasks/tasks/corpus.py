"""A small bundled corpus of fabrication notes, searched when a request brings no documents."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_CORPUS", "Document"]


class Document(BaseModel):
    """A document to search: an id, a title and its text."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    title: str = ""
    text: str


_NOTES = [
    (
        "fdm-failure-camera",
        "Camera-based failure detection for FDM printing",
        "A webcam watches the print bed; a classifier flags spaghetti, layer shifts and "
        "detached parts so that a failed 3D print is stopped within minutes.",
    ),
    (
        "warping-pla",
        "Why PLA parts warp on large beds",
        "Uneven cooling shrinks the first layers; a heated bed, a brim and an enclosure "
        "reduce warping of PLA and PETG parts.",
    ),
    (
        "nozzle-clog",
        "Detecting nozzle clogs from extruder current",
        "Extruder motor current rises before a clog; a threshold on the current trace "
        "detects under-extrusion and pauses the printer.",
    ),
    (
        "acoustic-monitoring",
        "Acoustic monitoring of 3D printers",
        "Microphones near the stepper motors hear skipped steps and grinding filament; "
        "the spectrum separates normal printing from failure.",
    ),
    (
        "bed-leveling",
        "Automatic bed levelling with inductive probes",
        "A probe measures a mesh of bed heights; the firmware compensates the first layer "
        "so adhesion is even across the plate.",
    ),
    (
        "resin-exposure",
        "Exposure calibration for resin printers",
        "Exposure time per layer sets cure depth; test matrices find the time at which "
        "small features survive without bleeding.",
    ),
    (
        "multi-material",
        "Purge volumes in multi-material printing",
        "Switching filament leaves mixed colour in the nozzle; purge towers and flushing "
        "into infill trade material for clean colour changes.",
    ),
    (
        "print-time-estimation",
        "Estimating print time and cost from G-code",
        "Simulating acceleration limits over the G-code predicts print time; volume and "
        "material density give filament grams and cost.",
    ),
    (
        "cnc-toolpath",
        "Adaptive clearing toolpaths for CNC milling",
        "Constant tool engagement keeps cutting forces even, allowing deeper cuts and "
        "longer tool life than offset pocketing.",
    ),
    (
        "laser-kerf",
        "Kerf compensation in laser cutting",
        "The beam removes a kerf of material; offsetting the path by half the kerf keeps "
        "press-fit joints tight.",
    ),
    (
        "autonomous-farm",
        "Scheduling an autonomous print farm",
        "A scheduler assigns queued jobs to idle printers by material and size, and "
        "requeues a job automatically when failure detection stops a print.",
    ),
    (
        "layer-adhesion",
        "Layer adhesion and nozzle temperature",
        "Hotter extrusion bonds layers more strongly; tensile tests across temperatures "
        "show the strength gain and the loss of surface quality.",
    ),
]

DEFAULT_CORPUS: list[Document] = [Document(id=i, title=t, text=x) for i, t, x in _NOTES]
