"""What the web pages' drawing of every `{{ }}` string (`finalize`, features.drawing.readable) costs.

    python benchmarks/bench_web_drawing.py [--rounds 15]

Renders one template, with the app's Jinja environment and with the same environment less its
`finalize`: 40 examples of 128 tokens (5,120 token spans through `saesteer.web.tokenspans`, a long feature page's
worth) and 2,000 labels, from prose, code, CJK, Arabic and French text with NBSPs (nothing in it is
drawn, so both pages are the same). Prints the median process CPU time per render over
interleaved rounds and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jinja2

from saesteer.web import pages

WORDS = ("The quick brown fox, café naïve 日本語の文章 مرحبا بالعالم \u00a0: 10\u202f€ "
         "def f(x):\n\treturn x\r\n").split(" ")
SOURCE = ('{% from "_macros.html" import tokens, label_or_none %}'
          '{% for ex in exs %}{{ tokens(ex) }}{% endfor %}{% for l in labels %}<td>{{ label_or_none(l) }}</td>{% endfor %}')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    drawn = pages.make_templates()
    plain = jinja2.Environment(loader=drawn.loader, autoescape=True, undefined=jinja2.StrictUndefined,
                               trim_blocks=True, lstrip_blocks=True)
    plain.filters.update(drawn.filters)
    plain.globals.update({k: drawn.globals[k] for k in ("token_spans", "fire_spans")})  # the token span builders
    toks = [" " + w for w in WORDS] * 400
    ctx = {"exs": [{"tokens": toks[i * 128:(i + 1) * 128], "acts": [0.5] * 128, "shade": [3] * 128, "centre": 5}
                   for i in range(40)],
           "labels": [f"label {i}: {' '.join(WORDS[i % 7:i % 7 + 5])}" for i in range(2000)]}
    templates = {"finalize": drawn.from_string(SOURCE), "none": plain.from_string(SOURCE)}
    pages_out = {k: t.render(**ctx) for k, t in templates.items()}
    assert pages_out["finalize"] == pages_out["none"], "nothing in this text is drawn: the pages must be equal"
    times: dict[str, list[float]] = {k: [] for k in templates}
    for r in range(args.rounds):
        for k in (list(templates) if r % 2 == 0 else list(templates)[::-1]):
            t0 = time.process_time()
            for _ in range(5):
                templates[k].render(**ctx)
            times[k].append((time.process_time() - t0) / 5)
    with_f, without = statistics.median(times["finalize"]), statistics.median(times["none"])
    spans = pages_out["finalize"].count('class="tok ')
    print(f"{spans} token spans, {len(ctx['labels'])} labels, {len(pages_out['finalize']):,} characters")
    print(f"median CPU per render over {args.rounds} interleaved rounds: with finalize {with_f * 1000:.1f} ms, "
          f"without {without * 1000:.1f} ms, ratio {with_f / without:.3f}")


if __name__ == "__main__":
    main()
