// saesteer: small page helpers (no data is ever written as HTML: only textContent).
"use strict";
(function () {
  // Tap/hover tooltips for tokens: the title attribute is invisible on touch screens.
  let tip = null;
  function hide() { if (tip) { tip.remove(); tip = null; } }
  function show(el) {
    hide();
    const text = el.getAttribute("data-tip") || el.getAttribute("title");
    if (!text) return;
    if (el.hasAttribute("title")) { el.setAttribute("data-tip", text); el.removeAttribute("title"); }
    tip = document.createElement("div");
    tip.className = "tip";
    tip.textContent = text;
    document.body.appendChild(tip);
    const r = el.getBoundingClientRect();
    const w = tip.offsetWidth;
    const left = Math.max(6, Math.min(window.scrollX + r.left, window.scrollX + document.documentElement.clientWidth - w - 6));
    tip.style.left = left + "px";   // CSSOM property writes are allowed under the CSP
    tip.style.top = (window.scrollY + r.bottom + 6) + "px";
  }
  document.addEventListener("mouseover", (e) => {
    const el = e.target.closest && e.target.closest(".tok[title], .tok[data-tip]");
    if (el && !el.closest(".scale")) show(el);
  });
  document.addEventListener("mouseout", (e) => {
    if (e.target.closest && e.target.closest(".tok")) hide();
  });
  document.addEventListener("click", (e) => {
    const el = e.target.closest && e.target.closest(".tok[title], .tok[data-tip]");
    if (el && !el.closest(".scale")) show(el); else hide();
  });
  // keyboard: a token's tip shows while it has the focus, goes when the focus leaves it (tabbing on
  // past the tokens) and on Escape, as a tooltip must be dismissible without moving the pointer
  document.addEventListener("focusin", (e) => {
    const el = e.target.closest && e.target.closest(".tok[title], .tok[data-tip]");
    if (el) show(el);
  });
  document.addEventListener("focusout", (e) => {
    if (e.target.closest && e.target.closest(".tok")) hide();
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") hide(); });
  window.addEventListener("scroll", hide, { passive: true });

  // A GET form's text as typed (forms marked data-lines-as-typed: the fire page's): HTML's form encoding writes each line break of a textarea as CRLF,
  // so the model would read "\r\n" where the user typed "\n" (the fire page ran Python code with a
  // CR token on every line). The query is built from the values instead; a link that spells out
  // %0D%0A still reaches the server as written.
  document.addEventListener("submit", (e) => {
    const form = e.target;
    if (e.defaultPrevented || !(form instanceof HTMLFormElement) || !form.hasAttribute("data-lines-as-typed")) return;
    e.preventDefault();
    const params = new URLSearchParams();
    for (const [k, v] of new FormData(form)) params.append(k, typeof v === "string" ? v.replace(/\r\n?/g, "\n") : v);
    const url = new URL(form.action, window.location.href);
    url.search = params.toString();
    window.location.assign(url.toString());
  });
})();
