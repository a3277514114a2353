"""What the API serves: one `ServedModel` per feature store that has a model, and one batching
`Scheduler` per model object (stores over the same model share it, and so share its batches).

The OpenAI "model" a request names is the store's id (from `/v1/models`): it picks the SAE the
request's edits refer to, the feature store that resolves "x" strengths (typical max
activations) and preset names, and the model that generates. An edit may name another store over
the same model (`"sae": ID`, or "ID/LATENT:..." in text): the SAE of each layer steers in one request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from saesteer.api.config import BatchConfig
from saesteer.api.scheduler import Scheduler

__all__ = ["ServedModel", "ApiService", "OVERRIDE_HINT"]

OVERRIDE_HINT = "--allow-model-mismatch when starting the server"


@dataclass
class ServedModel:
    id: str
    model: Any
    sae: Any
    store: Any  # features.FeatureStore (read-only)
    fingerprint: str
    hook: str
    allow_model_mismatch: bool
    scheduler: Scheduler
    # whether a text prompt gets BOS: the SAE's record (saes.bos.prepend_bos_for), as the web pages and
    # `saesteer steer` read it; None: the model's default
    prepend_bos: bool | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    # the served models over the same model object (this one included), by id: an edit may name one
    peers: dict[str, "ServedModel"] = field(default_factory=dict, repr=False)
    _tmax: dict[int, float | None] = field(default_factory=dict)
    _stops: dict[bool, tuple[int, ...]] = field(default_factory=dict, repr=False)
    _told_ignored: set[str] = field(default_factory=set, repr=False)  # chat_template_kwargs the log named

    def not_yet_told(self, ignored: list[str]) -> list[str]:
        """Those of the dropped chat_template_kwargs `ignored` the log has not named for this model
        yet (now marked told). Bounded: clients choose the names, so past 1024 it starts over."""
        new = [k for k in dict.fromkeys(ignored) if k not in self._told_ignored]
        if len(self._told_ignored) + len(new) > 1024:
            self._told_ignored.clear()
        self._told_ignored.update(new)
        return new

    def stop_ids(self, chat: bool) -> tuple[int, ...]:
        """The tokens that end a reply (`saesteer.api.prepare.eos_ids`), found once per model: reading
        a 150k-token vocabulary costs ~50 ms, too much for every request."""
        from saesteer.api.prepare import eos_ids

        if chat not in self._stops:
            self._stops[chat] = eos_ids(self.model, chat)
        return self._stops[chat]

    def typical_max(self, latent: int) -> float | None:
        from steering.store import StoreLink

        if latent not in self._tmax:
            self._tmax[latent] = StoreLink(self.store).typical_max(latent)
        return self._tmax[latent]

    def preset(self, name: str):
        from steering.store import StoreLink

        return StoreLink(self.store).preset(name)

    def preset_names(self) -> list[str]:
        return self.store.preset_names()

    def card(self) -> dict[str, Any]:
        """The /v1/models entry (OpenAI's fields, then what steering needs to know)."""
        from saes.identity import identity_of_model

        ident = identity_of_model(self.model)
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": "saesteer",
            "saesteer": {
                "model": ident.id if ident is not None else None,
                "sae_hook": self.hook,
                "sae_architecture": getattr(self.sae, "architecture", None),
                "d_sae": int(self.sae.d_sae),
                "sae_fingerprint": self.fingerprint,
                "presets": self.preset_names(),
                "chat_template": bool(getattr(self.model.tokenizer, "chat_template", None)),
            },
        }


class ApiService:
    """The served models and their schedulers (started/stopped with the app)."""

    def __init__(self, entries: Sequence[Any], config: BatchConfig | None = None) -> None:
        from saes.fingerprint import sae_fingerprint
        from steering.engine import BatchEngine
        from steering.resolve import sae_hook_name
        from steering.spec import SteeringError

        self.config = config or BatchConfig()
        self.models: dict[str, ServedModel] = {}
        self.unavailable: dict[str, str] = {}  # store id -> why its model cannot generate through the API
        self.schedulers: list[Scheduler] = []
        by_model: dict[int, list[Any]] = {}
        for e in entries:
            if e.engine is not None:
                by_model.setdefault(id(e.engine.model), []).append(e)
        for group in by_model.values():
            model = group[0].engine.model
            saes = {e.id: e.engine.sae for e in group}
            lock = group[0].queue.lock if group[0].queue is not None else None
            try:
                engine = BatchEngine(model, saes, max_rows=self.config.max_batch_rows,
                                     max_prefill_tokens=self.config.max_prefill_tokens, lock=lock)
            except SteeringError as e:  # e.g. a model without a KV-cache forward: the pages still work
                for e_ in group:
                    self.unavailable[e_.id] = str(e)
                continue
            sched = Scheduler(engine, max_queued=self.config.max_queued, name=group[0].id)
            self.schedulers.append(sched)
            for e in group:
                sae = e.engine.sae
                self.models[e.id] = ServedModel(
                    id=e.id, model=model, sae=sae, store=e.catalog.store, fingerprint=sae_fingerprint(sae),
                    hook=sae_hook_name(sae, e.id), allow_model_mismatch=bool(e.engine.allow_model_mismatch),
                    scheduler=sched, prepend_bos=e.engine.prepend_bos())
            peers = {e.id: self.models[e.id] for e in group}
            for served in peers.values():
                served.peers = peers

    def start(self) -> None:
        for s in self.schedulers:
            s.start()

    def close(self) -> None:
        for s in self.schedulers:
            s.close()

    def status(self) -> list[dict[str, Any]]:
        return [{"model": s.name, "in_flight": s.in_flight, "running_rows": s.engine.n_running,
                 "completed": s.completed} for s in self.schedulers]
