"""The topology as a picture: an SVG drawn from kitty_tasks/core/topology.py, no layout engine."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from html import escape

from kitty_tasks.core.topology import DELAY_PREFIX, TOPOLOGY, QueueSpec, Topology

__all__ = ["topology_svg"]

WIDTH = 980
ROW = 40
BOX_H = 26
TOP = 50
#: Column x and width: incoming exchanges, their queues, dead-letter exchanges, DLQs.
COLUMNS = {"in": (10, 150), "work": (250, 190), "dlx": (545, 130), "dlq": (770, 200)}
#: Fill and stroke of each kind of box.
COLOURS = {
    "exchange": ("#e8f0fe", "#3b6fd8"),
    "queue": ("#eaf6ea", "#2f7d32"),
    "stream": ("#f1e8fb", "#7b3fb8"),
    "dlq": ("#fdecea", "#b83227"),
    "delay": ("#fff6e0", "#b07d10"),
}
DRIFT = "#d00000"


@dataclass
class _Box:
    name: str
    kind: str
    x: float
    y: float
    w: float
    note: str = ""

    @property
    def mid_y(self) -> float:
        return self.y + BOX_H / 2


def _dead_letter_exchanges(topology: Topology) -> set[str]:
    named = {str(q.arguments.get("x-dead-letter-exchange")) for q in topology.queues}
    family = {ex.name for ex in topology.exchanges if ex.name in named}
    for ex in topology.exchanges:
        if ex.name in family and "alternate-exchange" in ex.arguments:
            family.add(str(ex.arguments["alternate-exchange"]))
    return family


def _queue_kind(queue: QueueSpec, dlx: set[str]) -> str:
    if queue.is_stream:
        return "stream"
    if any(b.exchange in dlx for b in queue.bindings):
        return "dlq"
    return "queue"


def _box_svg(box: _Box, drifted: Collection[str]) -> str:
    fill, stroke = COLOURS[box.kind]
    width = "1.2"
    if box.name in drifted:
        stroke, width = DRIFT, "3"
    radius = "12" if box.kind == "exchange" else "3"
    label = escape(box.name) + (f" ({escape(box.note)})" if box.note else "")
    if box.kind == "delay":
        label = f"queue, {escape(box.note)}"  # its name is the exchange's, just above
    return (
        f'<g class="node {box.kind}"><title>{escape(box.kind)} {escape(box.name)}</title>'
        f'<rect x="{box.x:.0f}" y="{box.y:.0f}" width="{box.w:.0f}" height="{BOX_H}" '
        f'rx="{radius}" fill="{fill}" stroke="{stroke}" stroke-width="{width}"/>'
        f'<text x="{box.x + box.w / 2:.0f}" y="{box.y + 17:.0f}" text-anchor="middle" '
        f'font-size="11">{label}</text></g>'
    )


def _line(x1: float, y1: float, x2: float, y2: float, *, dashed: bool = False,
          colour: str = "#555", label: str = "") -> str:  # fmt: skip
    dash = ' stroke-dasharray="5 4"' if dashed else ""
    text = ""
    if label:
        text = (
            f'<text x="{x2 - 6:.0f}" y="{y2 - 4:.0f}" text-anchor="end" font-size="9" '
            f'fill="{colour}">{escape(label)}</text>'
        )
    return (
        f'<path d="M{x1:.0f},{y1:.0f} C{(x1 + x2) / 2:.0f},{y1:.0f} {(x1 + x2) / 2:.0f},{y2:.0f} '
        f'{x2:.0f},{y2:.0f}" fill="none" stroke="{colour}"{dash} marker-end="url(#arrow)"/>{text}'
    )


def topology_svg(topology: Topology = TOPOLOGY, drifted: Collection[str] = ()) -> str:
    """An SVG of ``topology``: exchanges, queues, bindings, the delay ladder and the DLQs.

    Boxes whose name is in ``drifted`` are outlined in red (the broker differs there).
    """
    dlx = _dead_letter_exchanges(topology)
    delay_exchanges = [ex for ex in topology.exchanges if ex.name.startswith(DELAY_PREFIX)]
    delay_names = {ex.name for ex in delay_exchanges}
    incoming = [ex for ex in topology.exchanges if ex.name not in dlx | delay_names]
    work = [
        q for q in topology.queues
        if any(b.exchange in {ex.name for ex in incoming} for b in q.bindings)
    ]  # fmt: skip
    dead = [q for q in topology.queues if _queue_kind(q, dlx) == "dlq"]
    delay_queues = [
        q for q in topology.queues if any(b.exchange in delay_names for b in q.bindings)
    ]

    boxes: dict[str, _Box] = {}
    x, w = COLUMNS["work"]
    for row, queue in enumerate(work):
        kind = _queue_kind(queue, dlx)
        boxes[queue.name] = _Box(
            queue.name, kind, x, TOP + row * ROW, w, "stream" if kind == "stream" else ""
        )
    # A DLQ sits level with the queue it serves, so the lines run straight across.
    x, w = COLUMNS["dlq"]
    source_rows = {q.name: i for i, q in enumerate(work)}
    next_row = len(work)
    for queue in dead:
        key = next((b.routing_key for b in queue.bindings if b.routing_key in source_rows), None)
        row = source_rows[key] if key is not None else next_row
        next_row += key is None
        boxes[queue.name] = _Box(queue.name, "dlq", x, TOP + row * ROW, w)
    x, w = COLUMNS["in"]
    for index, ex in enumerate(incoming):
        ys = [boxes[q.name].y for q in work if any(b.exchange == ex.name for b in q.bindings)]
        y = sum(ys) / len(ys) if ys else TOP + (len(work) + index - len(incoming) + 1) * ROW
        boxes[ex.name] = _Box(ex.name, "exchange", x, y, w, ex.type)
    x, w = COLUMNS["dlx"]
    for ex in (e for e in topology.exchanges if e.name in dlx):
        ys = [boxes[q.name].y for q in dead if any(b.exchange == ex.name for b in q.bindings)]
        boxes[ex.name] = _Box(ex.name, "exchange", x, sum(ys) / len(ys) if ys else TOP, w, ex.type)

    ladder_top = TOP + max(len(work), next_row) * ROW + 70
    step = (WIDTH - 20) / max(1, len(delay_exchanges))
    for index, ex in enumerate(delay_exchanges):
        left = 10 + index * step
        boxes[ex.name] = _Box(ex.name, "exchange", left, ladder_top, step - 14)
    for queue in delay_queues:
        ex_box = boxes[queue.bindings[0].exchange]
        ttl = int(queue.arguments.get("x-message-ttl", 0)) // 1000
        boxes[queue.name + "#q"] = _Box(queue.name, "delay", ex_box.x, ladder_top + ROW + 10,
                                         ex_box.w, f"TTL {ttl}s")  # fmt: skip

    parts: list[str] = []
    for queue in topology.queues:
        target = boxes.get(queue.name)
        for binding in queue.bindings:
            source = boxes.get(binding.exchange)
            if source is None or target is None or binding.exchange in delay_names:
                continue
            parts.append(_line(source.x + source.w, source.mid_y, target.x, target.mid_y,
                               label=binding.routing_key))  # fmt: skip
        dead_to = queue.arguments.get("x-dead-letter-exchange")
        if dead_to and target is not None and dead_to in boxes and queue.name not in delay_names:
            exchange = boxes[str(dead_to)]
            parts.append(_line(target.x + target.w, target.mid_y, exchange.x, exchange.mid_y,
                               dashed=True, colour=COLOURS["dlq"][1]))  # fmt: skip
    for ex in topology.exchanges:
        alternate = ex.arguments.get("alternate-exchange")
        if alternate in boxes and ex.name in boxes:
            a, b = boxes[ex.name], boxes[str(alternate)]
            parts.append(_line(a.x + a.w / 2, a.y + BOX_H, b.x + b.w / 2, b.y, dashed=True,
                               colour=COLOURS["dlq"][1], label="alternate"))  # fmt: skip
    for queue in delay_queues:
        ex_box, q_box = boxes[queue.bindings[0].exchange], boxes[queue.name + "#q"]
        mid = ex_box.x + ex_box.w / 2
        parts.append(_line(mid, ex_box.y + BOX_H, mid, q_box.y))
    work_bottom = TOP + len(work) * ROW
    centre = COLUMNS["work"][0] + COLUMNS["work"][1] / 2
    if delay_queues:
        parts.append(_line(centre - 40, work_bottom, centre - 40, ladder_top - 4, dashed=True,
                           colour=COLOURS["delay"][1]))  # fmt: skip
        parts.append(
            f'<text x="{centre - 34:.0f}" y="{work_bottom + 34:.0f}" text-anchor="start" '
            f'font-size="10" fill="{COLOURS["delay"][1]}">retry: confirmed copy, key = queue</text>'
        )
        back = ladder_top + ROW + 10 + BOX_H + 22
        parts.append(
            f'<text x="{WIDTH / 2:.0f}" y="{back:.0f}" text-anchor="middle" font-size="10" '
            f'fill="{COLOURS["delay"][1]}">TTL expires: dead-lettered to the default exchange '
            "with the same key, straight back to the queue it came from</text>"
        )
    height = ladder_top + 2 * ROW + 60 if delay_queues else TOP + next_row * ROW + 40
    legend = "".join(
        f'<rect x="{10 + i * 120}" y="{height - 24}" width="14" height="14" fill="{fill}" '
        f'stroke="{stroke}"/>'
        f'<text x="{30 + i * 120}" y="{height - 13}" font-size="10">{kind}</text>'
        for i, (kind, (fill, stroke)) in enumerate(COLOURS.items())
    )
    headings = "".join(
        f'<text x="{x + w / 2}" y="{TOP - 16}" text-anchor="middle" font-size="11" '
        f'font-weight="bold">{escape(title)}</text>'
        for title, (x, w) in zip(
            ("exchanges", "queues", "dead-letter exchanges", "dead-letter queues"),
            COLUMNS.values(),
            strict=True,
        )
    )
    ladder_title = (
        f'<text x="10" y="{ladder_top - 12}" font-size="11" font-weight="bold">'
        "retry ladder (one delay exchange and queue per bucket)</text>"
        if delay_queues
        else ""
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" font-family="sans-serif" role="img" '
        'aria-labelledby="topology-title"><title id="topology-title">kitty_tasks topology: '
        "exchanges, queues, bindings, the retry ladder and the dead-letter queues</title>"
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#555"/></marker></defs>'
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>'
        + headings
        + ladder_title
        + "".join(parts)
        + "".join(_box_svg(box, drifted) for box in boxes.values())
        + legend
        + "</svg>\n"
    )
