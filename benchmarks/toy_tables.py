"""The RESULTS.md section of the toy world's concept recovery (`bench_features.py toy`), from the
scored SAEs and the linear ceilings of `toy_concepts`."""

from __future__ import annotations

import statistics
import time

from toy_concepts import ARCH_SHORT, F1_GOAL, Scored, families_of, share, why_failed


def _f1s(s: Scored) -> list[float]:
    return [m.f1 for m in s.best.values()]


def _rank(s: Scored) -> tuple:
    f = _f1s(s)
    return (share(f), statistics.fmean(f))


def _cell(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ({share(values):.0%})"


def toy_section(scored: list[Scored], ceilings: dict, *, command: str, load: tuple[str, str], threads: int,
                cache_rows: int, eval_rows: int) -> str:
    concepts = list(scored[0].best)
    best = max(scored, key=_rank)
    base = scored[0]
    per_arch = {}
    for s in scored:
        a = s.spec.arch
        if a not in per_arch or _rank(s) > _rank(per_arch[a]):
            per_arch[a] = s
    ceil = {layer: {c: v["f1"] for c, v in c_.get("f1", {}).items()} for layer, c_ in ceilings.items()}

    rows = ["| SAE (architecture, hook layer, width, k, LR, training tokens) | training CPU s | F1 >= 0.8 | "
            "median best F1 | mean best F1 | L0 | dead / dense latents |", "|---|---|---|---|---|---|---|"]
    for s in scored:
        f = _f1s(s)
        mark = "**" if s is best else ""
        rows.append(f"| {mark}{s.spec.label}{mark} | {s.record['cpu_s']:.0f} | **{share(f):.1%}** ({sum(v >= F1_GOAL for v in f)}) | "
                    f"{statistics.median(f):.3f} | {statistics.fmean(f):.3f} | {s.l0:.1f} | {s.dead} / {s.dense} |")
    for layer, c in sorted(ceil.items()):
        f = [c[x] for x in concepts if x in c]
        rows.append(f"| linear ceiling at blocks.{layer}.hook_resid_post (best single direction: logistic probe + "
                    f"threshold) | {ceilings[layer]['cpu_s']:.0f} | **{share(f):.1%}** ({sum(v >= F1_GOAL for v in f)}) | "
                    f"{statistics.median(f):.3f} | {statistics.fmean(f):.3f} | - | - |")

    fams = families_of(concepts)
    cols = [("first row", base)] + [(f"best {ARCH_SHORT.get(a, a)}", s) for a, s in per_arch.items() if s is not base]
    head = "| concepts | n | " + " | ".join(f"{t}: {s.spec.label}" for t, s in cols)
    head += "".join(f" | ceiling L{layer}" for layer in sorted(ceil)) + " |"
    fl = [head, "|---|---|" + "---|" * (len(cols) + len(ceil))]
    for fam, cs in fams.items():
        cells = [_cell([s.best[c].f1 for c in cs]) for _, s in cols]
        cells += [_cell([ceil[layer][c] for c in cs if c in ceil[layer]]) for layer in sorted(ceil)]
        fl.append(f"| {fam} | {len(cs)} | " + " | ".join(cells) + " |")

    layer_ceiling = ceil.get(best.spec.layer, {})
    reasons = {"low ceiling": [], "absorbed": [], "split": [], "near miss": [], "no match": []}
    for c, m in best.best.items():
        if m.f1 < F1_GOAL:
            reasons[why_failed(m, layer_ceiling.get(c))].append(c)
    why = ["| reason | concepts | examples (best latent: precision / recall; the concept that latent fits best, F1) |",
           "|---|---|---|"]
    explain = {
        "low ceiling": f"the linear ceiling at L{best.spec.layer} is under {F1_GOAL} too: the probe finds no direction that detects it",
        "absorbed": "its best latent fires on a superset (precision < 0.5 <= recall): a broader concept's latent",
        "split": "its best latent covers a part of it (recall < 0.5 <= precision): spread over several latents",
        "near miss": "precision and recall both >= 0.5, F1 under the goal",
        "no match": "precision and recall both under 0.5",
    }
    for r, cs in reasons.items():
        ex = ", ".join(f"`{c}` {best.best[c].precision:.2f} / {best.best[c].recall:.2f}"
                       + (f" (`{best.fits[c][0]}` {best.fits[c][1]:.2f})" if best.fits[c][0] != c else "") for c in cs[:5])
        by_family = {f: sum(c in cs for c in members) for f, members in fams.items()}
        where = ", ".join(f"{f.split(' (')[0]} {n}" for f, n in by_family.items() if n)
        why.append(f"| {r}: {explain[r]} | {len(cs)}{f' ({where})' if where else ''} | {ex} |")

    above = [c for c in concepts if c in layer_ceiling and best.best[c].f1 > layer_ceiling[c] + 0.02]
    beat = (f"The ceiling is a probe's, not a strict bound: {len(above)} of the best SAE's concepts beat it by more than 0.02"
            + (f" ({', '.join(f'`{c}` {best.best[c].f1:.2f} vs {layer_ceiling[c]:.2f}' for c in above[:6])})." if above else "."))
    diffs = sorted(concepts, key=lambda c: -(best.best[c].f1 - base.best[c].f1))[:8]
    dl = [f"| concept | first row: latent, F1 | best: latent, F1 | ceiling L{best.spec.layer} |", "|---|---|---|---|"]
    dl += [f"| {c} | {base.latent[c]}, {base.best[c].f1:.3f} | {best.latent[c]}, {best.best[c].f1:.3f} | "
           f"{layer_ceiling.get(c, float('nan')):.3f} |" for c in diffs]
    fit_rows = next(iter(ceilings.values()))["fit_rows"] if ceilings else 0
    return f"""### Toy world: best single latent per ground-truth concept

Machine: 2 CPU cores (shared; load average {load[0]} before, {load[1]} after), torch threads {threads}, {time.strftime('%Y-%m-%d %H:%M')} UTC.
`{command}`

Toy model (4 layers, d_model 128), residual stream `blocks.<layer>.hook_resid_post`. One activation cache of
{cache_rows:,} tokens of the toy corpus's train split holds every layer; each SAE trains alone on it by `training.train`
(batch 4096, several passes where the tokens exceed the cache), CPU seconds of the training call. Scored on the
{eval_rows:,} tokens of the validation split: a latent detects a concept on a token when it fires there (the saved
inference form); F1 against the token's ground-truth tag (`toyworld.concept_masks`); for each concept (seen >= 20 times)
the best latent's F1 (`features.concepts`). L0: latents firing per validation token; dead / dense: latents firing on
no / over 10% of the validation tokens.
Linear ceiling (`evals.ceiling`): per concept a balanced logistic probe on the activations, fitted with its
F1-best threshold on {fit_rows:,} random train rows, scored on the same validation tokens: a latent fires where one
direction passes a threshold, so no SAE latent at that hook can beat the best single direction by much.

{chr(10).join(rows)}

Mean best F1 by concept family (share at F1 >= 0.8 in brackets; a family: the concepts sharing a prefix, e.g.
`name:anna`, `name:ben`, ...; the rest are context tags or single category concepts such as `name`, `colour`, `speech`):

{chr(10).join(fl)}

Why the concepts of the best SAE ({best.spec.label}) stay under F1 {F1_GOAL}:

{chr(10).join(why)}

{beat}

Concepts the best SAE gains most on over the first row:

{chr(10).join(dl)}
"""
