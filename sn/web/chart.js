// A small line chart on a <canvas>: the last N samples of one series, drawn by script (no inline
// styles, so it lives with the page's CSP). Gaps (null) break the line.

export class LineChart {
  constructor(canvas, { label, unit, color, capacity = 90 }) {
    this.canvas = canvas;
    this.label = label;
    this.unit = unit;
    this.color = color;
    this.capacity = capacity;
    this.samples = [];
    canvas.setAttribute("role", "img");
    this.draw();
  }

  push(value) {
    this.samples.push(value);
    if (this.samples.length > this.capacity) this.samples.shift();
    this.draw();
  }

  describe() {
    const last = [...this.samples].reverse().find((value) => value !== null && value !== undefined);
    return `${this.label}: ${last === undefined ? "no data yet" : `${format(last)} ${this.unit} now`}`;
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 300;
    const height = canvas.clientHeight || 140;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const values = this.samples.filter((value) => value !== null && value !== undefined);
    const top = Math.max(1e-9, ...values) * 1.15;
    const left = 42;
    const bottom = height - 18;
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = "#666";
    g.strokeStyle = "#ddd";
    g.lineWidth = 1;
    for (const fraction of [0, 0.5, 1]) {
      const y = bottom - fraction * (bottom - 8);
      g.beginPath();
      g.moveTo(left, y);
      g.lineTo(width - 4, y);
      g.stroke();
      g.fillText(values.length ? format(top * fraction) : "", 2, y + 4);
    }
    g.fillText(`${this.unit}, last ${this.capacity} s`, left, height - 4);
    g.strokeStyle = this.color;
    g.lineWidth = 2;
    g.beginPath();
    const step = (width - 4 - left) / Math.max(1, this.capacity - 1);
    let drawing = false;
    this.samples.forEach((value, index) => {
      const x = left + (this.capacity - this.samples.length + index) * step;
      if (value === null || value === undefined) {
        drawing = false;
        return;
      }
      const y = bottom - (value / top) * (bottom - 8);
      if (drawing) g.lineTo(x, y);
      else g.moveTo(x, y);
      drawing = true;
    });
    g.stroke();
    // A sample with no neighbour draws no line: mark every sample with a dot.
    g.fillStyle = this.color;
    this.samples.forEach((value, index) => {
      if (value === null || value === undefined) return;
      const x = left + (this.capacity - this.samples.length + index) * step;
      const y = bottom - (value / top) * (bottom - 8);
      g.beginPath();
      g.arc(x, y, 2.5, 0, 2 * Math.PI);
      g.fill();
    });
    canvas.setAttribute("aria-label", this.describe());
  }
}

export function format(value) {
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(1);
  return value.toFixed(2);
}
