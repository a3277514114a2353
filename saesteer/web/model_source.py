"""The web app's model side for one store: which features fire on a text, steered generation
beside the unsteered one, and strength sweeps, through `features` and `steering` (see
`sources.Engine`); a store's records are `store_source.StoreCatalog`'s."""

from __future__ import annotations

from typing import Any

from saesteer.web.store_source import StoreCatalog, finite, shades

__all__ = ["ModelEngine", "FiringScorer", "TOY_EXAMPLE_PROMPT"]

TOY_EXAMPLE_PROMPT = "the sailor"  # the steering page's starting prompt when the server runs the toy model


class ModelEngine:
    """Model work for one store: which features fire, steered generation, sweeps (see `sources.Engine`).

    Called only from the model's queue thread. `limits` bound what `steering` accepts too."""

    def __init__(self, model: Any, sae: Any, catalog: StoreCatalog, limits: Any,
                 allow_model_mismatch: bool = False) -> None:
        self.model = model
        self.sae = sae  # read from its folder, it keeps its training's BOS policy (saes.bos)
        self.catalog = catalog
        self.limits = limits
        self.allow_model_mismatch = allow_model_mismatch  # the operator accepted an SAE of another model

    @property
    def example_prompt(self) -> str:
        """What the steering page's prompt box starts with: a toy-world sentence for the toy model,
        nothing for other models (a toy prompt means nothing to them)."""
        from saes.identity import identity_of_model

        ident = identity_of_model(self.model)
        return TOY_EXAMPLE_PROMPT if ident is not None and ident.source == "toy" else ""

    # -- helpers --------------------------------------------------------------------------------
    def _steer_limits(self):
        from steering import SteerLimits

        return SteerLimits(max_abs_value=float(self.limits.max_abs_strength), max_multiple=float(self.limits.max_abs_multiple),
                           max_abs_scale=float(self.limits.max_abs_multiple))

    def prepend_bos(self) -> bool:
        """The BOS a prompt gets for this SAE (`saes.bos.prepend_bos_for`): the pages' and the API's."""
        from saes.bos import prepend_bos_for

        return prepend_bos_for(self.model, [self.sae])

    def _gen_config(self, req):
        from steering import GenerationConfig

        greedy = req.temperature <= 0
        return GenerationConfig(
            max_new_tokens=req.max_new_tokens, max_new_tokens_cap=int(self.limits.max_new_tokens),
            do_sample=not greedy, temperature=1.0 if greedy else float(req.temperature), seed=int(req.seed),
            prepend_bos=self.prepend_bos(),
        )

    @staticmethod
    def _feature_edit(e, value: float | None = None):
        from steering import FeatureEdit

        v = e.value if value is None else value
        return FeatureEdit(latent=e.latent, op=e.op, value=None if e.op == "ablate" else float(v),
                           unit=e.unit if e.op in ("add", "clamp") else "raw", positions=e.positions)

    # -- engine ---------------------------------------------------------------------------------
    def steer(self, req):
        from steering import compare

        from saesteer.web.schemas import SteerResult

        typical = self.catalog.typical_max(e.latent for e in req.edits)
        cmp = compare(self.model, self.sae, [self._feature_edit(e) for e in req.edits], [req.prompt],
                      self._gen_config(req), typical_max=typical, limits=self._steer_limits(),
                      allow_model_mismatch=self.allow_model_mismatch)
        return SteerResult(prompt=req.prompt, default=cmp.unsteered[0], steered=cmp.steered[0], edits=req.edits)

    # -- which features fire --------------------------------------------------------------------
    def fire(self, text: str, top_k: int):
        from features.text import features_on_text

        from saesteer.web.schemas import FeatureAct, FireResult, FiringFeature

        bos = self.prepend_bos()
        # a text longer than the model's context: features_on_text refuses it (ValueError -> 422)
        res = features_on_text(self.model, self.sae, text, top_n=int(top_k), prepend_bos=bos,
                               allow_model_mismatch=self.allow_model_mismatch)
        start = 1 if bos and len(res.tokens) > 1 else 0  # the BOS position: no meaning, huge norms
        toks = res.tokens[start:]
        acts_SF = res.acts_SF[start:]
        fired_F = (acts_SF > 0).sum(0)
        totals = sorted(((t.latent, float(acts_SF[:, t.latent].max())) for t in res.latents if int(fired_F[t.latent]) > 0),
                        key=lambda x: (-x[1], x[0]))[:50]
        known = self.catalog.summaries((i for i, _ in totals), with_scores=False)
        features = []
        token_shade = [0] * len(toks)
        for i, mx in totals:
            col = [float(a) for a in acts_SF[:, i]]
            s = known.get(i)
            sh = shades(col, (s.max_act if s and s.max_act else None) or mx)
            token_shade = [max(a, b) for a, b in zip(token_shade, sh)]
            features.append(FiringFeature(latent=i, label=s.label if s else None, max_act=mx,
                                          count=int(fired_F[i]), shade=sh, acts=col))
        labels = {i: s.label for i, s in known.items()}
        per_token = [[FeatureAct(latent=lat.latent, act=lat.act, label=labels.get(lat.latent)) for lat in t.latents] for t in toks]
        return FireResult(tokens=[t.token for t in toks], token_shade=token_shade, features=features, per_token=per_token)

    # -- sweeps ---------------------------------------------------------------------------------
    def sweep(self, req):
        from steering import SweepConfig, sweep

        from saesteer.web.schemas import SweepPoint, SweepResult

        e = req.edit
        if e.op not in ("add", "clamp"):
            raise ValueError(f"a sweep varies an add or clamp edit; got op {e.op!r}")
        typical = self.catalog.typical_max([e.latent])
        cfg = SweepConfig(strengths=list(req.values), op=e.op, unit=e.unit, positions=e.positions, perplexity=True)
        scorer = FiringScorer(self.model, self.sae, e.latent, self.prepend_bos())
        res = sweep(self.model, self.sae, e.latent, [req.prompt], scorer, cfg,
                    gen_config=self._gen_config(req), typical_max=typical, limits=self._steer_limits(),
                    allow_model_mismatch=self.allow_model_mismatch)
        points = [SweepPoint(value=p.strength, concept=finite(p.concept), fluency=finite(p.fluency),
                             aggregate=finite(p.aggregate), perplexity=finite(p.perplexity),
                             text=p.examples[0] if p.examples else "") for p in res.points]
        return SweepResult(latent=e.latent, op=e.op, unit=e.unit, points=points, recommended=res.recommended,
                           verdict=res.verdict,
                           concept="share of the generated tokens on which the feature fires (re-read by the unsteered model)",
                           fluency=FLUENCY_DESCRIPTION)


FLUENCY_DESCRIPTION = ("how natural the unsteered model finds the continuation (its surprise beyond the model's own "
                       "uncertainty), times penalties for repetition and punctuation runs: about 1 for unsteered "
                       "text, 0 for degenerate text (steering.fluency)")


class FiringScorer:
    """A judge-free steering scorer: concept = share of the continuation's tokens on which `feature`
    fires when the unsteered model reads the continuation, in [0, 1] (fluency: `steering.fluency`,
    measured by the sweep itself)."""

    def __init__(self, model: Any, sae: Any, latent: int, prepend_bos: bool | None = None) -> None:
        self.model, self.sae, self.latent = model, sae, int(latent)
        self.prepend_bos = prepend_bos  # None: as the SAE's cfg.json records (the engine passes `saes.bos`'s)

    def __call__(self, prompts, continuations):
        from steering.activations import mean_latent_activation
        from steering.evaluate import SampleScores

        out = []
        for text in continuations:
            if not text.strip():
                out.append(SampleScores(0.0))
                continue
            _, rate_F, _ = mean_latent_activation(self.model, self.sae, [text], prepend_bos=self.prepend_bos)
            out.append(SampleScores(float(rate_F[self.latent])))
        return out
