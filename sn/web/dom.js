// Building the page from data. Text only ever goes in through textContent or text nodes, and
// attributes through setAttribute: nothing a user wrote can become markup or script.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = String(value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Snowflake ids travel as decimal strings; anything else is not used in a link or a selector.
export const isId = (value) => typeof value === "string" && /^[0-9]{1,20}$/.test(value);

export function when(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function timeEl(iso) {
  return h("time", { datetime: iso, text: when(iso) });
}

// A status line for a form or a view: role=status so screen readers hear the result.
export function statusLine() {
  const el = h("p", { class: "status", role: "status", "aria-live": "polite" });
  el.show = (text, kind = "info") => {
    el.textContent = text;
    el.dataset.kind = kind;
  };
  return el;
}

export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id, text: label }), input, hint ? h("small", { text: hint }) : null);
}
