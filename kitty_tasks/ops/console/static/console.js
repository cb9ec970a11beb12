// The live depth charts: fetch /api/depth every five seconds and draw one polyline per queue.
// Only DOM methods and textContent are used, so nothing fetched is ever parsed as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#3b6fd8", "#d00000", "#2f9e44", "#f08c00", "#7b3fb8", "#0b7285", "#c2255c", "#5c940d"];
const REFRESH_MS = 5000;
const W = 900, H = 220, LEFT = 44, BOTTOM = 22, TOP = 10;

function element(name, attributes) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

function wanted(chart, data) {
  const only = (chart.dataset.queues || "").split(",").filter(Boolean);
  const names = Object.keys(data.queues);
  if (only.length) return names.filter((name) => only.includes(name));
  // The overview shows the queues that held anything in the window: an empty line says little.
  return names.filter((name) => data.queues[name].some((depth) => depth));
}

function draw(chart, data) {
  const names = wanted(chart, data);
  const times = data.times;
  // The last ten minutes, or since the console started when that is shorter.
  const end = data.now, start = Math.max(end - 600, times.length ? times[0] : end - 600);
  const peak = Math.max(1, ...names.flatMap((name) => data.queues[name].filter((d) => d !== null)));
  const x = (t) => LEFT + ((t - start) / Math.max(1, end - start)) * (W - LEFT - 8);
  const y = (d) => H - BOTTOM - (d / peak) * (H - BOTTOM - TOP);
  chart.replaceChildren();
  chart.appendChild(element("line", { x1: LEFT, y1: H - BOTTOM, x2: W - 8, y2: H - BOTTOM, stroke: "#999" }));
  chart.appendChild(element("line", { x1: LEFT, y1: TOP, x2: LEFT, y2: H - BOTTOM, stroke: "#999" }));
  for (const [label, value] of [[String(peak), TOP + 4], ["0", H - BOTTOM]]) {
    const text = element("text", { x: LEFT - 6, y: value, "text-anchor": "end", "font-size": 11 });
    text.textContent = label;
    chart.appendChild(text);
  }
  const ago = (t) => (end - t >= 90 ? `-${Math.round((end - t) / 60)} min` : `-${Math.round(end - t)} s`);
  const ticks = [[ago(start), start, "start"], [ago((start + end) / 2), (start + end) / 2, "middle"], ["now", end, "end"]];
  for (const [label, t, anchor] of ticks) {
    const text = element("text", { x: x(t), y: H - 6, "text-anchor": anchor, "font-size": 11 });
    text.textContent = label;
    chart.appendChild(text);
  }
  const legend = chart.parentElement.querySelector(".legend");
  legend.replaceChildren();
  names.forEach((name, index) => {
    const colour = COLOURS[index % COLOURS.length];
    const points = times
      .map((t, i) => [t, data.queues[name][i]])
      .filter(([t, d]) => d !== null && t >= start)
      .map(([t, d]) => `${x(t).toFixed(1)},${y(d).toFixed(1)}`);
    const line = element("polyline", { points: points.join(" "), fill: "none", stroke: colour, "stroke-width": 2 });
    line.dataset.queue = name;
    chart.appendChild(line);
    const key = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = colour;
    key.append(swatch, `${name} (${data.queues[name][data.queues[name].length - 1] ?? "-"})`);
    legend.appendChild(key);
  });
  if (!names.length) legend.textContent = "every queue was empty for the last ten minutes";
}

async function refresh(chart) {
  try {
    const answer = await fetch(chart.dataset.src, { credentials: "same-origin", cache: "no-store" });
    if (answer.ok) draw(chart, await answer.json());
  } catch (error) {
    chart.parentElement.querySelector(".legend").textContent = `cannot read the depths: ${error}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const chart of document.querySelectorAll("svg.depth-chart")) {
    refresh(chart);
    setInterval(() => refresh(chart), REFRESH_MS);
  }
});
