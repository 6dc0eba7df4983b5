// What every Side-Step widget panel shares: following one job's events in order, live or replayed.
// While a history replay is pending, live events wait (hold/release), so the replayed past is never skipped.

import { element } from "./format.js";

export class LivePanel {
  /** A panel root with the given class; subclasses build their content and implement reset() and show(data). */
  constructor(className) {
    this.root = element("div", `sidestep-panel ${className}`);
    this.jobId = null;
    this.lastSeq = 0;
    this.pending = null;
    this.root.dataset.replayed = "0";
  }

  /** Whether a message is new for this panel: a new job resets it, an already seen sequence number is skipped. */
  accept(data) {
    if (!data || typeof data.job_id !== "string" || !Number.isFinite(data.seq)) return false;
    if (data.job_id !== this.jobId) {
      this.jobId = data.job_id;
      this.lastSeq = 0;
      this.root.dataset.job = data.job_id;
      this.reset();
    }
    if (data.seq <= this.lastSeq) return false;
    this.lastSeq = data.seq;
    return true;
  }

  /** Show one live websocket message (or keep it for release() while held). */
  receive(data) {
    if (this.pending) this.pending.push(data);
    else if (this.accept(data)) this.show(data);
  }

  /** Keep live messages back until release(): a replay of the server's history is on its way. */
  hold() {
    this.pending ??= [];
  }

  /** Show the live messages kept while held (those the replay already showed are skipped). */
  release() {
    const pending = this.pending ?? [];
    this.pending = null;
    for (const data of pending) this.receive(data);
  }

  /** Show a job's kept messages (GET /sidestep/jobs), e.g. after a page reload; count the ones that were new. */
  replay(job) {
    let shown = 0;
    for (const { data } of job.events) {
      if (this.accept(data)) {
        this.show(data);
        shown += 1;
      }
    }
    this.root.dataset.replayed = String(Number(this.root.dataset.replayed) + shown);
    this.afterReplay(job);
  }

  /** Hook for subclasses: the replayed job's running/stoppable flags. */
  afterReplay(_job) {}
}
