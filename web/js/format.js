// Small DOM and text helpers shared by the Side-Step widgets (no side effects on import).

/** Create an element with an optional class name and text. */
export function element(tag, className = "", text = "") {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

/** Seconds as m:ss or h:mm:ss; a dash when unknown. */
export function formatDuration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "–";
  const total = Math.max(0, Math.round(seconds));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const secs = String(total % 60).padStart(2, "0");
  return hours ? `${hours}:${String(minutes).padStart(2, "0")}:${secs}` : `${minutes}:${secs}`;
}

/** A loss-like value with four significant digits; a dash when unknown. */
export function formatValue(value) {
  if (value == null || !Number.isFinite(value)) return "–";
  const magnitude = Math.abs(value);
  return magnitude !== 0 && (magnitude < 1e-3 || magnitude >= 1e4) ? value.toExponential(2) : value.toPrecision(4);
}

/** A learning rate in short exponent form (1.0e-4). */
export function formatRate(value) {
  if (value == null || !Number.isFinite(value)) return "–";
  return value === 0 ? "0" : value.toExponential(1);
}

/** The last `parts` components of a file path ("…/checkpoints/epoch_4"); the whole path when it is that short. */
export function shortPath(path, parts = 2) {
  const pieces = String(path).split(/[\\/]/).filter(Boolean);
  return pieces.length > parts ? `…/${pieces.slice(-parts).join("/")}` : String(path);
}

/** Copy text to the clipboard: the Clipboard API where allowed, else a hidden textarea and execCommand. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = element("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    return copied;
  }
}
