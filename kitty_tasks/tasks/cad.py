"""CAD task: a parametric primitive meshed into an ASCII STL."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kitty_tasks.runtime.application import app
from kitty_tasks.runtime.task import RETRY_ANY

__all__ = ["CadRequest", "cad_generate", "mesh_primitive", "to_ascii_stl"]

Vertex = tuple[float, float, float]
Triangle = tuple[Vertex, Vertex, Vertex]


class CadRequest(BaseModel):
    """Input of ``cad_generate``: a primitive, its size in millimetres and mesh resolution."""

    model_config = ConfigDict(extra="forbid")

    primitive: Literal["box", "cylinder", "sphere"]
    width: float = Field(10.0, gt=0, le=10_000)
    depth: float = Field(10.0, gt=0, le=10_000)
    height: float = Field(10.0, gt=0, le=10_000)
    radius: float = Field(5.0, gt=0, le=10_000)
    segments: int = Field(32, ge=3, le=512)
    name: str = Field("kitty_part", pattern=r"^[A-Za-z0-9_\-]{1,64}$")


def _box(w: float, d: float, h: float) -> list[Triangle]:
    p = [(x, y, z) for z in (0.0, h) for y in (0.0, d) for x in (0.0, w)]
    # Each face as two triangles, wound counter-clockwise seen from outside.
    quads = [(0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5)]
    return [t for a, b, c, e in quads for t in ((p[a], p[b], p[c]), (p[a], p[c], p[e]))]


def _cylinder(r: float, h: float, n: int) -> list[Triangle]:
    ring = [
        (r * math.cos(2 * math.pi * i / n), r * math.sin(2 * math.pi * i / n)) for i in range(n)
    ]
    triangles: list[Triangle] = []
    for i in range(n):
        (x0, y0), (x1, y1) = ring[i], ring[(i + 1) % n]
        triangles.append(((0.0, 0.0, 0.0), (x1, y1, 0.0), (x0, y0, 0.0)))
        triangles.append(((0.0, 0.0, h), (x0, y0, h), (x1, y1, h)))
        triangles.append(((x0, y0, 0.0), (x1, y1, 0.0), (x1, y1, h)))
        triangles.append(((x0, y0, 0.0), (x1, y1, h), (x0, y0, h)))
    return triangles


def _sphere(r: float, n: int) -> list[Triangle]:
    stacks, slices = max(2, n // 2), n

    def point(i: int, j: int) -> Vertex:
        theta, phi = math.pi * i / stacks, 2 * math.pi * j / slices
        return (
            r * math.sin(theta) * math.cos(phi),
            r * math.sin(theta) * math.sin(phi),
            r * math.cos(theta),
        )

    triangles: list[Triangle] = []
    for i in range(stacks):
        for j in range(slices):
            a, b = point(i, j), point(i + 1, j)
            c, d = point(i + 1, j + 1), point(i, j + 1)
            if i != 0:
                triangles.append((a, b, d))
            if i != stacks - 1:
                triangles.append((b, c, d))
    return triangles


def mesh_primitive(request: CadRequest) -> list[Triangle]:
    """Triangulate the requested primitive."""
    if request.primitive == "box":
        return _box(request.width, request.depth, request.height)
    if request.primitive == "cylinder":
        return _cylinder(request.radius, request.height, request.segments)
    return _sphere(request.radius, request.segments)


def _normal(t: Triangle) -> Vertex:
    (ax, ay, az), (bx, by, bz), (cx, cy, cz) = t
    ux, uy, uz, vx, vy, vz = bx - ax, by - ay, bz - az, cx - ax, cy - ay, cz - az
    nx, ny, nz = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
    length = math.sqrt(nx * nx + ny * ny + nz * nz) or 1.0
    return (nx / length, ny / length, nz / length)


def to_ascii_stl(name: str, triangles: list[Triangle]) -> str:
    """ASCII STL text of ``triangles``."""
    lines = [f"solid {name}"]
    for t in triangles:
        nx, ny, nz = _normal(t)
        lines.append(f"  facet normal {nx:.6e} {ny:.6e} {nz:.6e}")
        lines.append("    outer loop")
        lines.extend(f"      vertex {x:.6e} {y:.6e} {z:.6e}" for x, y, z in t)
        lines.append("    endloop")
        lines.append("  endfacet")
    lines.append(f"endsolid {name}")
    return "\n".join(lines) + "\n"


@app.task(name="cad.generate", autoretry_for=RETRY_ANY)
def cad_generate(**params: Any) -> dict[str, Any]:
    """Mesh a primitive; returns the STL text, facet and unique vertex counts, bounding box."""
    request = CadRequest.model_validate(params)
    triangles = mesh_primitive(request)
    vertices = {tuple(round(c, 9) for c in v) for t in triangles for v in t}
    xs, ys, zs = zip(*vertices, strict=True)
    return {
        "name": request.name,
        "primitive": request.primitive,
        "stl": to_ascii_stl(request.name, triangles),
        "facets": len(triangles),
        "vertices": len(vertices),
        "bounding_box": {"min": [min(xs), min(ys), min(zs)], "max": [max(xs), max(ys), max(zs)]},
    }
