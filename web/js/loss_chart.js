// The live loss chart of the training widget: raw and smoothed loss and the validation loss (left axis, linear or
// log; the best checkpoint ringed) and the learning rate (right axis), drawn on a <canvas> that follows the theme's
// text and border colours.

import { formatRate, formatValue } from "./format.js";

export const SERIES = {
  loss: { label: "loss", color: "rgba(91, 141, 239, 0.6)", width: 1, dash: [] },
  smoothed: { label: "smoothed", color: "#e8912d", width: 2, dash: [] },
  val: { label: "validation", color: "#d94fc8", width: 2, dash: [] },
  lr: { label: "learning rate", color: "#3fae6a", width: 1.5, dash: [4, 3] },
};
const MAX_POINTS = 4000;
const TICKS = 4;
const PAD = { left: 48, right: 52, top: 8, bottom: 18 };

/** A value → [0, 1] mapping over the finite values of some series, with tick values for its axis. */
function axis(values, logScale) {
  const usable = values.filter((v) => v != null && Number.isFinite(v) && (!logScale || v > 0));
  if (!usable.length) return null;
  const forward = logScale ? Math.log10 : (v) => v;
  const inverse = logScale ? (v) => 10 ** v : (v) => v;
  let low = forward(Math.min(...usable));
  let high = forward(Math.max(...usable));
  const spread = high - low || Math.abs(high) * 0.1 || 1;
  low -= spread * 0.05;
  high += spread * 0.05;
  const ticks = Array.from({ length: TICKS }, (_, i) => inverse(low + ((high - low) * i) / (TICKS - 1)));
  return { map: (v) => (forward(v) - low) / (high - low), ticks, logScale };
}

/** The learning-rate axis: from 0 to the largest rate seen. */
function rateAxis(values) {
  const usable = values.filter((v) => v != null && Number.isFinite(v));
  if (!usable.length) return null;
  const high = Math.max(...usable) * 1.05 || 1;
  const ticks = Array.from({ length: TICKS }, (_, i) => (high * i) / (TICKS - 1));
  return { map: (v) => v / high, ticks };
}

export class LossChart {
  /** Draw into `canvas`; redraws on resize and (at most once per frame) when points arrive. */
  constructor(canvas) {
    this.canvas = canvas;
    this.points = [];
    this.validation = [];
    this.best = null;
    this.logScale = false;
    this.frame = 0;
    new ResizeObserver(() => this.schedule()).observe(canvas);
  }

  /** Add one optimiser step {step, loss, smoothed, lr}; halve the resolution past MAX_POINTS. */
  add(point) {
    this.points.push(point);
    if (this.points.length > MAX_POINTS) {
      const last = this.points.length - 1;
      this.points = this.points.filter((_, i) => i % 2 === 0 || i === last);
    }
    this.schedule();
  }

  /** Add one validation loss {step, val} (fixed noises: it moves only when the adapter does). */
  addValidation(point) {
    this.validation.push(point);
    this.schedule();
  }

  /** Ring the validation point of the best checkpoint so far ({step, val}). */
  setBest(point) {
    this.best = point;
    this.schedule();
  }

  /** Forget every point (a new run started). */
  clear() {
    this.points = [];
    this.validation = [];
    this.best = null;
    this.schedule();
  }

  /** Switch the loss axis between linear and logarithmic. */
  setLogScale(on) {
    this.logScale = on;
    this.schedule();
  }

  /** Redraw on the next animation frame. */
  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  /** Size the canvas to its box and draw the axes and every series. */
  draw() {
    const { canvas } = this;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    const style = getComputedStyle(canvas);
    const theme = { text: style.color, grid: style.getPropertyValue("--border-color").trim() || "rgba(128,128,128,0.4)" };
    ctx.font = `10px ${style.fontFamily}`;
    const plot = { x: PAD.left, y: PAD.top, w: width - PAD.left - PAD.right, h: height - PAD.top - PAD.bottom };
    if (!this.points.length && !this.validation.length) {
      this.drawMessage(ctx, plot, theme, "waiting for the first step…");
      return;
    }
    const loss = axis([...this.points.flatMap((p) => [p.loss, p.smoothed]), ...this.validation.map((p) => p.val)], this.logScale);
    const rate = rateAxis(this.points.map((p) => p.lr));
    const steps = [...this.points, ...this.validation].map((p) => p.step);
    const first = Math.min(...steps);
    const span = Math.max(...steps) - first || 1;
    const x = (step) => plot.x + ((step - first) / span) * plot.w;
    this.drawAxes(ctx, plot, theme, loss, rate, [first, first + span]);
    if (rate) this.drawSeries(ctx, plot, x, rate, "lr");
    if (loss) {
      this.drawSeries(ctx, plot, x, loss, "loss");
      this.drawSeries(ctx, plot, x, loss, "smoothed");
      this.drawSeries(ctx, plot, x, loss, "val", this.validation, true);
      if (this.best) this.drawBest(ctx, plot, x, loss);
    }
  }

  /** A ring around the best checkpoint's validation point. */
  drawBest(ctx, plot, x, scale) {
    const { step, val } = this.best;
    if (val == null || !Number.isFinite(val) || (scale.logScale && val <= 0)) return;
    ctx.strokeStyle = SERIES.val.color;
    ctx.lineWidth = 2;
    ctx.setLineDash([]);
    ctx.beginPath();
    ctx.arc(x(step), plot.y + plot.h - scale.map(val) * plot.h, 6, 0, 2 * Math.PI);
    ctx.stroke();
  }

  drawMessage(ctx, plot, theme, text) {
    ctx.strokeStyle = theme.grid;
    ctx.strokeRect(plot.x, plot.y, plot.w, plot.h);
    ctx.fillStyle = theme.text;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(text, plot.x + plot.w / 2, plot.y + plot.h / 2);
  }

  drawAxes(ctx, plot, theme, loss, rate, [firstStep, lastStep]) {
    ctx.lineWidth = 1;
    ctx.setLineDash([]);
    ctx.strokeStyle = theme.grid;
    ctx.strokeRect(plot.x, plot.y, plot.w, plot.h);
    ctx.textBaseline = "middle";
    for (let i = 0; i < TICKS; i++) {
      const y = plot.y + plot.h - (plot.h * i) / (TICKS - 1);
      ctx.strokeStyle = theme.grid;
      ctx.beginPath();
      ctx.moveTo(plot.x, y);
      ctx.lineTo(plot.x + plot.w, y);
      ctx.stroke();
      if (loss) {
        ctx.fillStyle = theme.text;
        ctx.textAlign = "right";
        ctx.fillText(formatValue(loss.ticks[i]), plot.x - 4, y);
      }
      if (rate) {
        ctx.fillStyle = SERIES.lr.color;
        ctx.textAlign = "left";
        ctx.fillText(formatRate(rate.ticks[i]), plot.x + plot.w + 4, y);
      }
    }
    ctx.fillStyle = theme.text;
    ctx.textBaseline = "top";
    ctx.textAlign = "left";
    ctx.fillText(`step ${firstStep}`, plot.x, plot.y + plot.h + 4);
    ctx.textAlign = "right";
    ctx.fillText(`step ${lastStep}`, plot.x + plot.w, plot.y + plot.h + 4);
  }

  /** One series of `points` as a line (with a dot at every point when `dots`). */
  drawSeries(ctx, plot, x, scale, key, points = this.points, dots = false) {
    const { color, width, dash } = SERIES[key];
    const usable = (value) => value != null && Number.isFinite(value) && (!scale.logScale || value > 0);
    const y = (value) => plot.y + plot.h - scale.map(value) * plot.h;
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineWidth = width;
    ctx.setLineDash(dash);
    ctx.beginPath();
    let drawing = false;
    for (const point of points) {
      const value = point[key];
      if (!usable(value)) {
        drawing = false;
        continue;
      }
      if (drawing) ctx.lineTo(x(point.step), y(value));
      else ctx.moveTo(x(point.step), y(value));
      drawing = true;
    }
    ctx.stroke();
    ctx.setLineDash([]);
    for (const point of dots || points.length === 1 ? points : []) {
      if (usable(point[key])) ctx.fillRect(x(point.step) - 2, y(point[key]) - 2, 4, 4);
    }
  }
}
