// Side-Step's live widgets on Train Adapter and Encode Dataset: websocket events routed by node id,
// histories replayed after a reload or graph load, and Stop & save through the pack's own route.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { EncodePanel } from "./encode_panel.js";
import { TrainPanel } from "./train_panel.js";

const WIDGET_NAME = "sidestep_live";
const STYLESHEET = new URL("./sidestep_widget.css", import.meta.url).href;
const JOBS_ROUTE = "/sidestep/jobs";

/** The panel class and websocket event of each node type that has a widget. */
const PANELS = {
  SideStepTrainAdapter: { event: "sidestep.progress", create: () => new TrainPanel({ onStop: stopJob, viewUrl }) },
  SideStepEncodeDataset: { event: "sidestep.encode", create: () => new EncodePanel() },
};
const panels = new WeakMap();

/** ComfyUI's URL of a file in its output folder. */
function viewUrl(filename, subfolder) {
  const query = new URLSearchParams({ filename, subfolder, type: "output" });
  return api.apiURL(`/view?${query}`);
}

/** Ask the server to stop a running training job (Stop & save); throws with the server's reason. */
async function stopJob(jobId) {
  const response = await api.fetchApi(`${JOBS_ROUTE}/${encodeURIComponent(jobId)}/stop`, { method: "POST" });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error ?? `HTTP ${response.status}`);
  }
}

/** The workflow's top-level graph (subgraphs hang below it). */
function rootGraph() {
  return app.rootGraph ?? app.graph;
}

/** The node behind an execution id ("4", or "12:4" inside the subgraph of node 12), or null. */
function nodeForExecutionId(executionId) {
  let graph = rootGraph();
  let node = null;
  for (const part of String(executionId ?? "").split(":")) {
    node = graph?.getNodeById(part) ?? null;
    if (!node) return null;
    graph = node.subgraph;
  }
  return node;
}

/** Every [node, panel] of a graph, inside subgraphs too. */
function* panelsOf(graph) {
  for (const node of graph?.nodes ?? []) {
    const panel = panels.get(node);
    if (panel) yield [node, panel];
    if (node.subgraph) yield* panelsOf(node.subgraph);
  }
}

/** The panel of the node an event came from. */
function panelFor(executionId) {
  const node = nodeForExecutionId(executionId);
  return node ? panels.get(node) : undefined;
}

/** Grow a node so its widget fits (keeping any larger size the user chose). */
function fitNode(node) {
  const panel = panels.get(node);
  if (!panel) return;
  const [width, height] = node.computeSize();
  node.setSize([Math.max(node.size[0], width, panel.minWidth), Math.max(node.size[1], height)]);
  node.setDirtyCanvas?.(true, true);
}

/** Add the live panel to a Train Adapter or Encode Dataset node. */
function attachPanel(node) {
  const kind = PANELS[node.comfyClass ?? node.type];
  if (!kind || panels.has(node)) return;
  const panel = kind.create();
  const widget = node.addDOMWidget(WIDGET_NAME, "sidestep-live", panel.root, {
    serialize: false,
    getMinHeight: () => panel.minHeight,
  });
  widget.serialize = false;
  panels.set(node, panel);
  const onAdded = node.onAdded;
  node.onAdded = function (...args) {
    onAdded?.apply(this, args);
    panel.root.dataset.nodeId = String(this.id); // ids are given when the node joins a graph
  };
  fitNode(node);
}

/** The server's kept events of every node's latest job, keyed by execution id. */
async function fetchJobs() {
  const response = await api.fetchApi(JOBS_ROUTE, { cache: "no-store" });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return (await response.json()).jobs;
}

/** Replay the server's history onto the panels of the loaded graph; live events wait meanwhile. */
async function replayJobs() {
  const held = [...panelsOf(rootGraph())];
  for (const [, panel] of held) panel.hold();
  try {
    const jobs = Object.entries(await fetchJobs());
    const jobOf = new Map(jobs.map(([executionId, job]) => [nodeForExecutionId(executionId), job]));
    for (const [node, panel] of held) {
      const job = jobOf.get(node);
      if (job && job.node_type === (node.comfyClass ?? node.type)) panel.replay(job);
    }
  } catch (error) {
    console.warn("[Side-Step] could not fetch the training history:", error);
  } finally {
    for (const [, panel] of held) panel.release();
  }
}

/** Load the widgets' stylesheet once. */
function addStylesheet() {
  if (document.querySelector(`link[href="${STYLESHEET}"]`)) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = STYLESHEET;
  document.head.append(link);
}

/** Route live events to the panels; replay the history after a websocket reconnect. */
function listen() {
  for (const { event } of Object.values(PANELS)) {
    api.addEventListener(event, ({ detail }) => panelFor(detail?.node)?.receive(detail));
  }
  api.addEventListener("execution_error", ({ detail }) => panelFor(detail?.node_id)?.fail?.(detail.exception_message ?? "error"));
  api.addEventListener("reconnected", () => replayJobs());
}

app.registerExtension({
  name: "SideStep.TrainingWidget",
  setup() {
    addStylesheet();
    listen();
  },
  nodeCreated(node) {
    attachPanel(node);
  },
  loadedGraphNode(node) {
    fitNode(node);
    panels.get(node)?.hold(); // released by the replay in afterConfigureGraph
  },
  async afterConfigureGraph() {
    await replayJobs();
  },
});
