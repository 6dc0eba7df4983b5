// The Train Adapter widget: status, progress bar, loss chart with the validation loss, the best epoch, last
// checkpoint, preview players, the adapter path with a copy button, and Stop & save.

import { copyText, element, formatDuration, formatRate, formatValue, shortPath } from "./format.js";
import { LivePanel } from "./live_panel.js";
import { LossChart, SERIES } from "./loss_chart.js";

const ENDINGS = {
  finished: "finished",
  stopped: "stopped early — checkpoint and adapter saved",
  failed: "failed",
};
const IDLE_TEXT = "Queue the prompt to train: progress, loss and preview songs appear here.";

/** The epoch to show: the one in progress during steps, the completed count otherwise. */
function shownEpoch(data) {
  const epoch = data.kind === "step" ? data.epoch + 1 : data.epoch;
  return Math.min(epoch, data.total_epochs || epoch);
}

/** "epoch 2/20 · step 14/140 · 3.1 samples/s · 0:42 elapsed · ETA 3:10" */
function statusText(data) {
  const parts = [`epoch ${shownEpoch(data)}/${data.total_epochs}`, `step ${data.step}/${data.total_steps}`];
  if (data.samples_per_second != null) parts.push(`${data.samples_per_second.toFixed(2)} samples/s`);
  parts.push(`${formatDuration(data.elapsed_seconds)} elapsed`);
  if (data.eta_seconds != null && !(data.kind in ENDINGS)) parts.push(`ETA ${formatDuration(data.eta_seconds)}`);
  return parts.join(" · ");
}

/** "loss 0.4213 · smoothed 0.4402 · lr 1.0e-4 · grad norm 0.8123" for a step. */
function stepText(data) {
  return [
    `loss ${formatValue(data.loss)}`,
    `smoothed ${formatValue(data.smoothed_loss)}`,
    `lr ${formatRate(data.lr)}`,
    `grad norm ${formatValue(data.grad_norm)}`,
  ].join(" · ");
}

export class TrainPanel extends LivePanel {
  /** `onStop(jobId)` asks the server to stop; `viewUrl(file, subfolder)` is ComfyUI's URL of an output file. */
  constructor({ onStop, viewUrl }) {
    super("sidestep-train");
    this.onStop = onStop;
    this.viewUrl = viewUrl;
    this.minHeight = 450;
    this.minWidth = 420;
    this.build();
    this.reset();
  }

  build() {
    const head = element("div", "sidestep-row");
    this.status = element("div", "sidestep-status");
    this.stopButton = element("button", "sidestep-button sidestep-stop", "Stop & save");
    this.stopButton.title = "Finish the current step, save a checkpoint and the adapter, and continue the workflow with it";
    this.stopButton.addEventListener("click", () => this.requestStop());
    head.append(this.status, this.stopButton);
    this.bar = element("div", "sidestep-bar");
    this.barFill = element("div", "sidestep-bar-fill");
    this.bar.append(this.barFill);
    this.stats = element("div", "sidestep-stats");
    this.canvas = element("canvas", "sidestep-chart");
    this.chart = new LossChart(this.canvas);
    this.validation = element("div", "sidestep-line sidestep-validation");
    this.checkpoint = element("div", "sidestep-line sidestep-checkpoint");
    this.message = element("div", "sidestep-line sidestep-message");
    this.adapter = this.buildAdapterRow();
    this.previews = element("div", "sidestep-previews");
    this.root.append(head, this.bar, this.stats, this.buildLegend(), this.canvas, this.validation, this.checkpoint, this.message, this.adapter, this.previews);
  }

  buildLegend() {
    const legend = element("div", "sidestep-row sidestep-legend");
    for (const { label, color, dash } of Object.values(SERIES)) {
      const item = element("span", "sidestep-legend-item", label);
      const swatch = element("span", dash.length ? "sidestep-swatch sidestep-swatch-dashed" : "sidestep-swatch");
      swatch.style.borderColor = color;
      item.prepend(swatch);
      legend.append(item);
    }
    const toggle = element("label", "sidestep-legend-item sidestep-log");
    this.logBox = element("input");
    this.logBox.type = "checkbox";
    this.logBox.addEventListener("change", () => this.chart.setLogScale(this.logBox.checked));
    toggle.append(this.logBox, " log scale");
    legend.append(toggle);
    return legend;
  }

  buildAdapterRow() {
    const row = element("div", "sidestep-row sidestep-adapter");
    this.adapterPath = element("code", "sidestep-path");
    this.copyButton = element("button", "sidestep-button sidestep-copy", "copy");
    this.copyButton.title = "Copy the adapter folder's path";
    this.copyButton.addEventListener("click", () => this.copyAdapterPath());
    row.append(element("span", "", "adapter:"), this.adapterPath, this.copyButton);
    return row;
  }

  /** A fresh run: empty chart, no previews, no adapter yet. */
  reset() {
    this.points = 0;
    this.chart.clear();
    this.previews.replaceChildren();
    this.status.textContent = IDLE_TEXT;
    this.stats.textContent = "";
    this.validation.textContent = "validation loss: –";
    this.valPoints = 0;
    this.root.dataset.valPoints = "0";
    delete this.root.dataset.bestEpoch;
    this.checkpoint.textContent = "last checkpoint: –";
    this.checkpoint.title = "";
    this.setMessage("");
    this.adapter.hidden = true;
    this.setProgress(0, 0);
    this.setState(this.jobId ? "running" : "idle");
    this.root.dataset.points = "0";
  }

  /** Show one training event. */
  show(data) {
    if (data.total_steps) {
      this.status.textContent = statusText(data);
      this.setProgress(data.step, data.total_steps);
    }
    if (data.kind === "step") this.showStep(data);
    else if (data.kind === "validation") this.showValidation(data);
    else if (data.kind === "checkpoint") this.showCheckpoint(data);
    else if (data.kind === "preview") this.showPreview(data);
    else if (data.kind === "note") this.setMessage(data.message);
    else if (data.kind in ENDINGS) this.showEnd(data);
  }

  showStep(data) {
    this.points += 1;
    this.root.dataset.points = String(this.points);
    this.stats.textContent = stepText(data);
    this.chart.add({ step: data.step, loss: data.loss, smoothed: data.smoothed_loss, lr: data.lr });
  }

  showValidation(data) {
    this.valPoints += 1;
    this.root.dataset.valPoints = String(this.valPoints);
    this.lastVal = { step: data.step, val: data.val_loss };
    this.chart.addValidation(this.lastVal);
    this.showBest(data);
  }

  /** "validation loss 0.4213 (step 40) · best: epoch 3, 0.4012" */
  showBest(data) {
    const parts = [];
    if (this.lastVal) parts.push(`validation loss ${formatValue(this.lastVal.val)} (step ${this.lastVal.step})`);
    if (data.best_epoch != null) {
      parts.push(`best: epoch ${data.best_epoch}, ${formatValue(data.best_val_loss)}`);
      this.root.dataset.bestEpoch = String(data.best_epoch);
    }
    if (parts.length) this.validation.textContent = parts.join(" · ");
  }

  showCheckpoint(data) {
    const path = data.checkpoint_path;
    this.checkpoint.textContent = `last checkpoint: ${shortPath(path)}`;
    this.checkpoint.title = path;
    if (data.best_epoch != null && data.best_epoch === data.epoch && data.val_loss != null) {
      this.chart.setBest({ step: data.step, val: data.val_loss });
    }
    this.showBest(data);
  }

  showPreview(data) {
    const item = element("div", "sidestep-preview");
    item.append(element("span", "sidestep-preview-label", `epoch ${data.epoch} · loss ${formatValue(data.loss)}`));
    if (data.preview_file) {
      const audio = element("audio", "sidestep-audio");
      audio.controls = true;
      audio.preload = "none";
      audio.src = this.viewUrl(data.preview_file, data.preview_subfolder ?? "");
      item.append(audio);
    } else {
      item.append(element("code", "sidestep-path", data.preview_path));
    }
    this.previews.prepend(item);
  }

  showEnd(data) {
    this.setState(data.kind);
    this.showBest(data);
    const detail = data.message ? `: ${data.message}` : "";
    this.setMessage(`${ENDINGS[data.kind]}${detail}`, data.kind === "failed");
    if (data.adapter_path) {
      this.adapterPath.textContent = data.adapter_path;
      this.adapterPath.title = data.adapter_path;
      this.adapter.hidden = false;
    }
  }

  /** The prompt failed in this node outside the trainer (ComfyUI's execution_error). */
  fail(text) {
    if (this.root.dataset.state !== "running") return;
    this.setState("failed");
    this.setMessage(`failed: ${text}`, true);
  }

  afterReplay(job) {
    if (!job.running && this.root.dataset.state === "running") this.setState("ended");
    this.stopButton.disabled = !job.stoppable || this.root.dataset.state !== "running";
  }

  setState(state) {
    this.root.dataset.state = state;
    this.stopButton.disabled = state !== "running";
    this.stopButton.textContent = "Stop & save";
  }

  setProgress(step, total) {
    const percent = total ? Math.min(100, (100 * step) / total) : 0;
    this.barFill.style.width = `${percent}%`;
    this.bar.title = total ? `${percent.toFixed(1)} %` : "";
  }

  setMessage(text, isError = false) {
    this.message.textContent = text;
    this.message.classList.toggle("sidestep-error", isError);
  }

  async requestStop() {
    if (!this.jobId) return;
    this.stopButton.disabled = true;
    this.stopButton.textContent = "stopping…";
    this.setMessage("Stopping after this step: saving a checkpoint and the adapter…");
    try {
      await this.onStop(this.jobId);
    } catch (error) {
      this.setMessage(`Could not stop: ${error.message}`, true);
      this.setState(this.root.dataset.state);
    }
  }

  async copyAdapterPath() {
    const copied = await copyText(this.adapterPath.textContent);
    this.copyButton.textContent = copied ? "copied" : "copy failed";
    setTimeout(() => {
      this.copyButton.textContent = "copy";
    }, 1500);
  }
}
