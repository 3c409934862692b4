// Renders /api/openapi.json: operations, parameters, bodies, responses,
// schemas, and a form to try each call. Everything from the document is
// inserted as text (textContent), never as HTML.
"use strict";

const doc = { spec: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function resolve(schema) {
  if (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return { name, schema: doc.spec.components.schemas[name] };
  }
  return { name: null, schema };
}

// A one-line description of a schema's type.
function typeOf(schema) {
  if (!schema) return "";
  const { name, schema: s } = resolve(schema);
  if (name) return name;
  if (s.oneOf) return s.oneOf.map(typeOf).join(" | ");
  if (s.anyOf) return s.anyOf.map(typeOf).join(" | ");
  let t = Array.isArray(s.type) ? s.type.join(" | ") : (s.type || "any");
  if (t.includes("array") && s.items) t = t.replace("array", typeOf(s.items) + "[]");
  if (s.enum) t += " (" + s.enum.join(", ") + ")";
  const bounds = [];
  if (s.minimum !== undefined) bounds.push("≥ " + s.minimum);
  if (s.maximum !== undefined) bounds.push("≤ " + s.maximum);
  if (s.minLength !== undefined) bounds.push("length ≥ " + s.minLength);
  if (s.maxLength !== undefined) bounds.push("length ≤ " + s.maxLength);
  if (bounds.length) t += " [" + bounds.join(", ") + "]";
  return t;
}

function schemaTable(schema) {
  const { schema: s } = resolve(schema);
  if (!s || !s.properties) return el("p", {}, el("code", {}, typeOf(schema)));
  const required = new Set(s.required || []);
  return el("table", {},
    el("tr", {}, el("th", {}, "field"), el("th", {}, "type"), el("th", {}, "description")),
    Object.entries(s.properties).map(([k, v]) =>
      el("tr", {},
        el("td", {}, el("code", {}, k), required.has(k) ? " *" : ""),
        el("td", {}, el("code", {}, typeOf(v))),
        el("td", {}, v.description || resolve(v).schema.description || ""))));
}

function example(schema, depth = 0) {
  const { schema: s } = resolve(schema);
  if (!s || depth > 4) return null;
  if (s.example !== undefined) return s.example;
  if (s.properties) {
    const out = {};
    for (const [k, v] of Object.entries(s.properties)) {
      if ((s.required || []).includes(k)) out[k] = example(v, depth + 1);
    }
    return out;
  }
  const t = Array.isArray(s.type) ? s.type[0] : s.type;
  return { string: "text", integer: 1, number: 1, boolean: true, array: [] }[t] ?? null;
}

function tryForm(path, method, op) {
  const params = op.parameters || [];
  const inputs = {};
  const rows = params.map((p) => {
    inputs[p.name] = el("input", { placeholder: typeOf(p.schema) });
    return el("label", {}, p.name + " (" + p.in + (p.required ? ", required" : "") + ")", inputs[p.name]);
  });
  let body = null;
  const content = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
  if (content) {
    body = el("textarea", {});
    body.value = JSON.stringify(example(content.schema), null, 2);
    rows.push(el("label", {}, "body (JSON)", body));
  }
  const out = el("div", {});
  const send = async () => {
    let url = path;
    const query = new URLSearchParams();
    const headers = {};
    for (const p of params) {
      const v = inputs[p.name].value;
      if (v === "") continue;
      if (p.in === "path") url = url.replace("{" + p.name + "}", encodeURIComponent(v));
      else if (p.in === "query") query.set(p.name, v);
      else if (p.in === "header") headers[p.name] = v;
    }
    if (String(query)) url += "?" + query;
    const key = document.getElementById("api-key").value;
    if (key) headers.Authorization = "Bearer " + key;
    const init = { method: method.toUpperCase(), headers };
    if (body && body.value.trim()) {
      headers["Content-Type"] = "application/json";
      init.body = body.value;
    }
    out.replaceChildren(el("p", {}, "…"));
    try {
      const res = await fetch(url, init);
      const text = await res.text();
      let shown = text;
      try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* not JSON */ }
      out.replaceChildren(
        el("p", { class: res.ok ? "status-ok" : "status-err" }, res.status + " " + res.statusText),
        el("pre", {}, shown));
    } catch (e) {
      out.replaceChildren(el("p", { class: "status-err" }, String(e)));
    }
  };
  return el("div", { class: "try" }, el("h4", {}, "Try it"), rows,
    el("button", { type: "button", onclick: send }, "Send"), out);
}

function operation(path, method, op, id) {
  const params = op.parameters || [];
  const body = el("div", { class: "body" });
  if (op.description) body.append(el("p", {}, op.description));
  if (params.length) {
    body.append(el("h4", {}, "Parameters"), el("table", {},
      el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, "type"), el("th", {}, "description")),
      params.map((p) => el("tr", {},
        el("td", {}, el("code", {}, p.name), p.required ? " *" : ""),
        el("td", {}, p.in),
        el("td", {}, el("code", {}, typeOf(p.schema))),
        el("td", {}, p.description || "")))));
  }
  const content = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
  if (content) body.append(el("h4", {}, "Request body"), schemaTable(content.schema));
  body.append(el("h4", {}, "Responses"), el("table", {},
    el("tr", {}, el("th", {}, "status"), el("th", {}, "description"), el("th", {}, "body")),
    Object.entries(op.responses || {}).map(([status, r]) => {
      const c = r.content && r.content["application/json"];
      return el("tr", {}, el("td", {}, el("code", {}, status)), el("td", {}, r.description || ""),
        el("td", {}, c ? el("code", {}, typeOf(c.schema)) : ""));
    })));
  body.append(tryForm(path, method, op));
  return el("details", { class: "op", id },
    el("summary", {}, el("span", { class: "method " + method }, method),
      el("span", { class: "path" }, path), el("span", { class: "summary" }, op.summary || ""),
      el("span", { class: "tag" }, (op.tags || []).join(", "))),
    body);
}

function render(spec) {
  doc.spec = spec;
  document.getElementById("title").textContent = spec.info.title + " " + spec.info.version;
  document.getElementById("description").textContent = spec.info.description || "";
  const ops = document.getElementById("operations");
  const toc = document.getElementById("toc");
  ops.replaceChildren();
  let n = 0;
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const id = "op-" + (n++);
      ops.append(operation(path, method, op, id));
      toc.append(el("a", { href: "#" + id }, method.toUpperCase() + " " + path + " — " + (op.summary || "")));
    }
  }
  const schemas = document.getElementById("schemas");
  for (const [name, s] of Object.entries(spec.components.schemas || {})) {
    schemas.append(el("h3", { id: "schema-" + name }, name),
      s.description ? el("p", {}, s.description) : null,
      schemaTable(s));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const key = document.getElementById("api-key");
  key.value = sessionStorage.getItem("confab-api-key") || "";
  key.addEventListener("change", () => sessionStorage.setItem("confab-api-key", key.value));
  fetch("/api/openapi.json")
    .then((r) => r.json())
    .then(render)
    .catch((e) => {
      document.getElementById("operations").replaceChildren(el("p", {}, "Could not load the document: " + e));
    });
});
