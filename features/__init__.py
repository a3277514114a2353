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
"""

from features.build import BuildResult, build_feature_store
from features.config import BuildConfig
from features.fingerprint import sae_fingerprint
from features.records import (
    ConceptMatch,
    Example,
    FeatureFilter,
    FeatureRecord,
    FeatureStats,
    FeatureSummary,
    Histogram,
    Label,
    LabelProvenance,
    LogitEffects,
    Neighbour,
    ParentLink,
    Score,
    ScoreInput,
    SearchHit,
    TokenEffect,
)
from features.source import ActivationSource, CacheSource, ContextBatch, SyntheticSource, TensorSource
from features.store import (
    SCHEMA_VERSION,
    FeatureIndexError,
    FeatureNotWrittenError,
    FeatureStore,
    StoreError,
    StoreMismatchError,
    StoreReadOnlyError,
)

__all__ = [
    "ActivationSource", "BuildConfig", "BuildResult", "CacheSource", "ConceptMatch", "ContextBatch", "Example",
    "FeatureFilter", "FeatureIndexError", "FeatureNotWrittenError", "FeatureRecord", "FeatureStats", "FeatureStore",
    "FeatureSummary", "Histogram", "Label", "LabelProvenance", "LogitEffects", "Neighbour", "ParentLink",
    "SCHEMA_VERSION", "Score", "ScoreInput", "SearchHit", "StoreError", "StoreMismatchError", "StoreReadOnlyError",
    "SyntheticSource", "TensorSource", "TokenEffect", "build_feature_store", "sae_fingerprint",
]
