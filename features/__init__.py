"""features: the feature store - per-latent statistics, examples, neighbours and search.

Build (one streaming pass of an SAE over an activation cache, memory bounded):

    from features import BuildConfig, CacheSource, build_feature_store
    build_feature_store("toy.db", sae, CacheSource("caches/toy"), BuildConfig(), model=model)

Read (auto-interp, steering, the web app):

    from features import FeatureStore
    store = FeatureStore.open("toy.db", readonly=True, sae=sae)   # refuses a store of another SAE
    rec = store.feature(12)            # FeatureRecord: stats, histogram, examples, logits, neighbours, ...
    store.list_features(sort="freq", filter={"alive_only": True}, offset=0, limit=50)
    store.search("ocean")

Which latents fire on a text: `features.text.features_on_text(model, sae, "some text")`.
Which latent best matches a ground-truth concept: `features.concepts.concept_f1(...)`.

Names are imported lazily, so `import features` (e.g. `features.config` for the CLI's flags) stays
cheap: no torch until a name is used."""

from __future__ import annotations

from saes.lazy import lazy_exports

_LAZY = {
    "ActivationSource": "features.source",
    "BuildConfig": "features.config",
    "BuildResult": "features.build",
    "CacheSource": "features.source",
    "ConceptMatch": "features.records",
    "ContextBatch": "features.source",
    "Example": "features.records",
    "FeatureFilter": "features.records",
    "Correlated": "features.records",
    "FeatureIndexError": "features.store",
    "FeatureNotWrittenError": "features.store",
    "FeatureRecord": "features.records",
    "FeatureStats": "features.records",
    "FeatureStore": "features.store",
    "FeatureSummary": "features.records",
    "Histogram": "features.records",
    "Label": "features.records",
    "LabelProvenance": "features.records",
    "LogitEffects": "features.records",
    "Neighbour": "features.records",
    "ParentLink": "features.records",
    "SCHEMA_VERSION": "features.store",
    "Score": "features.records",
    "ScoreInput": "features.records",
    "SearchHit": "features.records",
    "StoreError": "features.store",
    "StoreMismatchError": "features.store",
    "StoreReadOnlyError": "features.store",
    "SyntheticSource": "features.source",
    "TensorSource": "features.source",
    "TokenEffect": "features.records",
    "build_feature_store": "features.build",
    "sae_fingerprint": "features.fingerprint",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
