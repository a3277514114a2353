// features.drawing.readable in the browser, for the text a page's script writes itself (the
// steering playground's prompt, continuations and labels): every `{{ }}` of the server's pages is
// drawn by the Python function, and tests/test_user_paths10.py checks that the two agree.
// `rule` comes from the server (pages.READABLE_RULE): the names of the drawn characters and the
// blocks of the right-to-left scripts. Works on code points, as Python's str does.
"use strict";
window.saesteerReadable = function (rule) {
  const names = rule.names;
  const rtlBlocks = rule.rtl_blocks;
  const DRAWN = /^[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]$/u;
  const KEPT_BETWEEN_VISIBLE = "\u00ad\u200c\u200d";  // soft hyphen, ZWNJ, ZWJ
  const BIDI_MARKS = "\u200e\u200f\u061c";  // LRM, RLM, ALM
  const shows = (c) => c !== undefined && !/[\s\p{C}\p{Z}]/u.test(c);  // Python: isprintable() and not isspace()
  const rtlLetter = (c) => /^\p{L}$/u.test(c) && rtlBlocks.some(([a, b]) => a <= c.codePointAt(0) && c.codePointAt(0) <= b);
  const isTag = (c) => c.codePointAt(0) >= 0xe0020 && c.codePointAt(0) <= 0xe007e;

  function drawn(c) {
    const code = c.codePointAt(0);
    if (code < 0x20) return String.fromCodePoint(0x2400 + code);
    if (code === 0x7f) return "\u2421";
    if (DRAWN.test(c)) return "\u27e8" + (names[code] || "U+" + code.toString(16).toUpperCase().padStart(4, "0")) + "\u27e9";
    return c;
  }

  function flagTags(chars) {  // positions of the tags of a region's flag: U+1F3F4, tags, U+E007F
    const kept = new Set();
    for (let i = 0; i < chars.length; i++) {
      if (chars[i] !== "\u{1f3f4}") continue;
      let j = i + 1;
      while (j < chars.length && isTag(chars[j])) j++;
      if (j > i + 1 && chars[j] === "\u{e007f}") for (let k = i + 1; k <= j; k++) kept.add(k);
    }
    return kept;
  }

  return function readable(text) {
    const chars = Array.from(String(text).replace(/\r\n/g, "\n"));
    const flags = flagTags(chars);
    const marks = chars.some((c) => BIDI_MARKS.includes(c)) && chars.some(rtlLetter);
    return chars.map((c, i) => {
      if (c === "\n" || c === "\t" || flags.has(i) || (marks && BIDI_MARKS.includes(c))) return c;
      if (KEPT_BETWEEN_VISIBLE.includes(c) && shows(chars[i - 1]) && shows(chars[i + 1])) return c;
      return drawn(c);
    }).join("");
  };
};
