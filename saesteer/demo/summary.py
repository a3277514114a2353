"""`print_summary`: SAE quality, a few labelled features with their top examples, the steering example."""

from __future__ import annotations

from typing import Any

from saesteer.demo.config import DemoConfig
from saesteer.demo.console import fmt_secs, make_console
from saesteer.demo.results import DemoResult, SteeringExample


def print_summary(result: DemoResult, console: Any = None) -> None:
    """SAE quality, a few labelled features with their top examples, the steering example."""
    con = console or make_console()
    con.rule("[bold]summary", align="left")
    _print_quality(con, result)
    _print_showcase(con, result)
    s = result.steering
    if s is not None:
        _print_steering(con, s, result.config)

    from rich.text import Text

    con.print()
    times = ", ".join(f"{k} {v:.1f} s" + (" (reused)" if result.stage_status.get(k) == "reused" else "")
                      for k, v in result.stage_seconds.items())
    con.print(f"stage times: {times}; total {fmt_secs(result.total_seconds)}")
    con.print(Text(f"work folder: {result.paths.out} (summary.json, train/training_curves.html, features.db)"))


def _print_quality(con: Any, result: DemoResult) -> None:
    """The SAE's quality table, its Matryoshka levels, the training run and the ground-truth match."""
    from rich.table import Table

    from training.report import dead_figures_note

    m, cfg = result.metrics, result.config
    q = Table(title=f"SAE quality: {result.sae_name} on {cfg.hook} (held-out tokens; dead: see below)",
              title_justify="left")
    for col in ("explained variance", "CE loss recovered", "L0", "dead", "held-out dead", "cache dead", "dense", "KL"):
        q.add_column(col, justify="right")
    d_sae = int(m.get("d_sae") or cfg.d_sae)
    cache_dead = result.store_summary.get("dead")
    ce = m.get("ce_loss_recovered")
    kl = m.get("kl_div")
    q.add_row(f"{m['explained_variance']:.3f}", "-" if ce is None else f"{ce:.3f}", f"{m['l0']:.1f}",
              f"{m['dead_fraction']:.1%}", f"{m['eval_dead_fraction']:.1%}",
              "-" if cache_dead is None else f"{cache_dead / d_sae:.1%}",
              f"{m.get('dense_fraction', 0.0):.1%}", "-" if kl is None else f"{kl:.4f}")
    con.print(q)
    levels = m.get("levels") or []
    if levels:
        con.print("Matryoshka levels (explained variance using the first w latents): "
                  + ", ".join(f"{lv['width']}: {lv['explained_variance']:.3f}" for lv in levels))
    t = result.train_info
    rate = t.get("tokens_per_second")
    con.print(f"trained on {t.get('tokens_trained') or 0:,} tokens in {t.get('steps') or 0:,} steps"
              + (f" ({rate:,.0f} tokens/s, step method {t.get('step_method')})" if rate else "")
              + "; " + dead_figures_note(m.get("dead_window_tokens"), m.get("eval_rows"), result.cache_rows))
    c = result.concepts
    if c.get("concepts"):
        con.print(f"ground truth: of {c['concepts']} toy-world concepts, {c['f1_at_least_0.5']} have a latent with "
                  f"token F1 >= 0.5 and {c['f1_at_least_0.8']} one with F1 >= 0.8 (median best F1 "
                  f"{c['median_best_f1']:.2f})")


def _print_showcase(con: Any, result: DemoResult) -> None:
    """The labelled features of the showcase, each with two top examples."""
    from rich.text import Text

    con.print()
    con.print(Text.assemble(("labelled features", "bold"), (  # the judge's name is the user's (--judge-model)
        f" ({result.labelled:,} labelled by {result.judge}; label, its detection / fuzzing scores, the ground-truth "
        f"concept it matches; activating token in [[ ]])")))
    for f in result.showcase:
        sc = ", ".join(f"{k} {v:.2f}" for k, v in sorted(f.scores.items()))
        lvl = "" if f.level is None else f", Matryoshka level {f.level}"
        gt = "" if f.concept is None else f"; matches '{f.concept}' with F1 {f.f1:.2f}"
        con.print(Text.assemble((f"  #{f.latent} ", "bold"), (f"{f.label}", "bold cyan"),
                                f"   ({sc}; fires on {f.freq:.2%} of tokens{lvl}{gt})"))
        for e in f.examples[:2]:
            con.print(Text("      " + e))


def _print_steering(con: Any, s: SteeringExample, cfg: DemoConfig) -> None:
    from rich.table import Table
    from rich.text import Text

    con.print()
    where = ("every position" if cfg.steer_positions == "all"
             else f"token positions {cfg.steer_positions} (0 = BOS)")
    det = "" if s.detection is None else f", detection {s.detection:.2f}"
    con.print(Text.assemble(("steering", "bold"), f": feature #{s.latent} ", (f"{s.label or 'unlabelled'}", "bold cyan"),
                            f" matches topic '{s.topic}' (token F1 {s.concept_f1:.2f}; fires on {s.freq:.1%} of "
                            f"tokens{det})"))
    d, t = s.dev, s.test
    con.print(Text(f"  add {s.strength:g} x its typical max activation"
                   + ("" if s.raw_strength is None else f" (= {s.raw_strength:.2f})") + f" at {where}, picked on "
                   f"{d['samples']} dev samples (seed {d['seed']}) from {len(s.candidates)} candidate latent(s) by "
                   + (s.rule if s.met else f"the closest to the targets: no strength met {s.rule}")))
    con.print(Text(f"  held-out ({t['samples']} samples, seed {t['seed']}): '{s.topic}' share of topic words "
              f"{t['share_default']:.0%} -> {t['share_steered']:.0%} (+-{t['share_steered_se']:.0%}); fluency "
              f"{t['fluency_default']:.2f} -> {t['fluency_steered']:.2f}; grammatical sentences "
              f"{t['grammar_default']:.0%} -> {t['grammar_steered']:.0%}  (dev: {d['share_default']:.0%} -> "
              f"{d['share_steered']:.0%}; curve: {s.sweep_html})"))
    if t["share_steered"] < 0.5 or t["grammar_steered"] < 0.8 or t["fluency_steered"] < 0.8:
        con.print("  on the held-out samples the steering missed a target (share >= 50%, fluency >= 0.8, "
                  "grammatical >= 80%)")
    shown = (f"held-out samples: {s.visible} of {t['samples']} are on topic (share >= 50%) only when steered; the "
             f"first {len(s.examples)} of them" if s.visible else
             f"the first {len(s.examples)} held-out samples (none is on topic only when steered)")
    tab = Table(show_lines=True, title=f"{shown}; same seed, {cfg.steer_new_tokens} new tokens", title_justify="left")
    tab.add_column("sample", style="bold", ratio=1, overflow="fold")
    tab.add_column("default", ratio=4, overflow="fold")
    tab.add_column("steered", ratio=4, overflow="fold")
    for e in s.examples:
        tab.add_row(Text(f"#{e['sample']}"), _topic_marked(e["default"], s.topic), _topic_marked(e["steered"], s.topic))
    con.print(tab)


def _topic_marked(text: str, topic: str):
    """The text with the topic's words in bold green (other topics' words dim)."""
    from rich.text import Text

    from toyworld.validate import topic_counts

    out = Text()
    for i, w in enumerate(text.split(" ")):
        counts = topic_counts(w)
        style = "bold green" if counts.get(topic) else ("dim" if any(counts.values()) else "")
        out.append(("" if i == 0 else " "))
        out.append(w, style=style)
    return out

