// The Encode Dataset widget: clip i/n, the current file, and the rejected files (reasons on hover).

import { element } from "./format.js";
import { LivePanel } from "./live_panel.js";

const IDLE_TEXT = "Queue the prompt to encode: each song is reported here.";

export class EncodePanel extends LivePanel {
  constructor() {
    super("sidestep-encode");
    this.minHeight = 72;
    this.minWidth = 0;
    this.status = element("div", "sidestep-status");
    this.bar = element("div", "sidestep-bar");
    this.barFill = element("div", "sidestep-bar-fill");
    this.bar.append(this.barFill);
    this.rejected = element("div", "sidestep-line sidestep-rejected");
    this.root.append(this.status, this.bar, this.rejected);
    this.reset();
  }

  /** A fresh run: nothing encoded or rejected yet. */
  reset() {
    this.status.textContent = IDLE_TEXT;
    this.barFill.style.width = "0%";
    this.showRejected([]);
    this.root.dataset.state = this.jobId ? "running" : "idle";
  }

  /** Show one per-clip event {index, total, file, status, reason, rejected: [[file, reason], ...]}. */
  show(data) {
    const done = data.index >= data.total;
    this.root.dataset.state = done ? "finished" : "running";
    this.status.textContent = `clip ${data.index}/${data.total} · ${data.file} (${data.status})`;
    this.status.title = data.file;
    this.barFill.style.width = `${data.total ? (100 * data.index) / data.total : 0}%`;
    this.showRejected(data.rejected ?? []);
  }

  showRejected(rejected) {
    this.rejected.textContent = `rejected: ${rejected.length}${rejected.length ? " (hover for reasons)" : ""}`;
    this.rejected.title = rejected.map(([file, reason]) => `${file}: ${reason}`).join("\n");
    this.rejected.classList.toggle("sidestep-error", rejected.length > 0);
    this.root.dataset.rejected = String(rejected.length);
  }
}
