// A small Markdown renderer for model output that builds DOM nodes directly.
// Model text only ever becomes text nodes; HTML in the input stays literal text, and
// links are kept only for http(s) and mailto URLs.

import { h } from "./dom.js";

const INLINE = new RegExp(
  [
    "(`+)([\\s\\S]*?[^`])\\1(?!`)", // 1,2 code span
    "\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*", // 3 strong
    "__(?=\\S)([\\s\\S]*?\\S)__", // 4 strong
    "\\*(?=[^\\s*])([\\s\\S]*?[^\\s*])\\*", // 5 em
    "(?<![\\w])_(?=[^\\s_])([\\s\\S]*?[^\\s_])_(?![\\w])", // 6 em
    "~~(?=\\S)([\\s\\S]*?\\S)~~", // 7 strike
    "\\[([^\\]\\n]+)\\]\\(\\s*<?([^)\\s>]+)>?(?:\\s+\"[^\"]*\")?\\s*\\)", // 8,9 link
    "(https?:\\/\\/[^\\s<>()\\[\\]]*[^\\s<>()\\[\\].,;:!?'\"])", // 10 bare URL
  ].join("|"),
  "g",
);

export function safeHref(url) {
  try {
    const u = new URL(url, "http://invalid.invalid/");
    if (u.origin === "http://invalid.invalid") return null; // relative: not from a model
    return ["http:", "https:", "mailto:"].includes(u.protocol) ? u.href : null;
  } catch {
    return null;
  }
}

function link(label, url) {
  const href = safeHref(url);
  if (!href) return null;
  return h("a", { href, target: "_blank", rel: "noopener noreferrer nofollow" }, ...label);
}

export function inline(text) {
  const out = [];
  let last = 0;
  const re = new RegExp(INLINE); // own lastIndex: inline() recurses for nested emphasis
  let m;
  while ((m = re.exec(text)) !== null) {
    if (m.index > last) out.push(text.slice(last, m.index));
    let node = null;
    if (m[2] !== undefined) node = h("code", {}, m[2].replace(/^ (.*) $/, "$1"));
    else if (m[3] !== undefined || m[4] !== undefined) node = h("strong", {}, ...inline(m[3] ?? m[4]));
    else if (m[5] !== undefined || m[6] !== undefined) node = h("em", {}, ...inline(m[5] ?? m[6]));
    else if (m[7] !== undefined) node = h("del", {}, ...inline(m[7]));
    else if (m[8] !== undefined) node = link(inline(m[8]), m[9]);
    else if (m[10] !== undefined) node = link([m[10]], m[10]);
    out.push(node || m[0]);
    last = re.lastIndex;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const HR = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

function splitRow(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  return s.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

function isBlockStart(line, next) {
  return FENCE.test(line) || HEADING.test(line) || HR.test(line) || QUOTE.test(line) ||
    LIST_ITEM.test(line) || (line.includes("|") && next !== undefined && TABLE_SEP.test(next));
}

export function renderMarkdown(text) {
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  return blocks(lines);
}

function blocks(lines) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i++;
      continue;
    }
    let m;
    if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const code = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence)) code.push(lines[i++]);
      i++; // closing fence (or end of a still-streaming answer)
      const pre = h("pre", { class: "code" }, h("code", {}, code.join("\n")));
      if (m[2]) pre.dataset.lang = m[2];
      out.push(pre);
      continue;
    }
    if ((m = HEADING.exec(line))) {
      out.push(h(`h${Math.min(m[1].length + 2, 6)}`, {}, ...inline(m[2])));
      i++;
      continue;
    }
    if (HR.test(line)) {
      out.push(h("hr"));
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        inner.push(m[1]);
        i++;
      }
      out.push(h("blockquote", {}, ...blocks(inner)));
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1])) {
      const head = splitRow(line);
      i += 2;
      const rows = [];
      while (i < lines.length && lines[i].includes("|") && lines[i].trim()) rows.push(splitRow(lines[i++]));
      out.push(h("div", { class: "table-wrap" }, h("table", { class: "md-table" },
        h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, ...inline(c))))),
        h("tbody", {}, rows.map((r) => h("tr", {}, head.map((_, k) => h("td", {}, ...inline(r[k] || "")))))))));
      continue;
    }
    if ((m = LIST_ITEM.exec(line))) {
      const ordered = /\d/.test(m[2]);
      const baseIndent = m[1].length;
      const items = [];
      while (i < lines.length) {
        const im = LIST_ITEM.exec(lines[i]);
        if (im && im[1].length <= baseIndent + 1 && /\d/.test(im[2]) === ordered) {
          items.push([im[3]]);
          i++;
        } else if (items.length && lines[i].trim() && /^\s+/.test(lines[i])) {
          items[items.length - 1].push(lines[i].replace(/^\s{1,4}/, ""));
          i++;
        } else if (items.length && !lines[i].trim() && i + 1 < lines.length &&
          (LIST_ITEM.exec(lines[i + 1]) || [])[1]?.length === baseIndent) {
          i++; // blank line between items of the same list
        } else break;
      }
      const attrs = {};
      if (ordered) {
        const start = parseInt(m[2], 10);
        if (start !== 1) attrs.start = start;
      }
      out.push(h(ordered ? "ol" : "ul", attrs, items.map((it) => {
        const sub = blocks(it);
        // A one-paragraph item renders inline, without the <p> margin.
        if (sub.length === 1 && sub[0].tagName === "P") return h("li", {}, ...sub[0].childNodes);
        return h("li", {}, ...sub);
      })));
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !(para.length && isBlockStart(lines[i], lines[i + 1]))) {
      para.push(lines[i++]);
    }
    out.push(h("p", {}, ...inline(para.join("\n"))));
  }
  return out;
}
