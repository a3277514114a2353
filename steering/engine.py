"""Batched, steered generation: many rows, each with its own prompt, settings, seed and edits.

    engine = BatchEngine(model, {"sae": sae})
    engine.add([Row(prompt_ids, SamplingParams(max_new_tokens=20, seed=1), steering=row_steering)])
    while engine.busy:
        for event in engine.step(): ...          # RowEvent: new text, token, finish reason

This is what the API server runs (`saesteer.api`), one step at a time on its worker thread. Rows
join the running batch between steps (continuous batching): new rows are taken oldest first and
prefilled in groups of close lengths (left padded; `steering.lengthgroups`), their KV cache is
merged into the batch's (`steering.runner`), and every step decodes one token for every row.
Finished rows leave at once. Each row's edits are its own
(`steering.rowedits`: per-row edit tensors in one hook per hook point), and so are its sampling
settings and random stream (`steering.sampling`), so a row's result does not depend on which
rows it shares the batch with (up to floating-point differences between batch shapes).

A row ends ('stop') at an end-of-text token (not part of the text), at a stop string (cut
before it), or when one of its stop triggers fires on a generated token (that token is kept);
('length') at max_new_tokens or the model's context; ('cancelled') when `cancel` is called.
The engine's hooks act only during its own forward passes (inside `lock` when given), so other
work on the same model between steps (e.g. a `steer` block holding the same lock) is not
steered by them; they are removed whenever the engine has no rows.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from saes.hookpoints import OptInSwitch
from steering.latentcolumns import LatentColumns
from steering.lengthgroups import prefill_groups
from steering.lowprecision import sae_precision
from steering.rowedits import BatchEditor, RowLayout, RowSteering, check_positions, editors_for, kept_columns
from steering.runner import make_runner
from steering.sampling import Choice, RowRandom, SamplingParams, choose
from steering.spec import SteeringError
from steering.textstream import TextAssembler
from steering.transcoder import InputCapture

if TYPE_CHECKING:
    from saes.base import SAE
    from steering.inputs import Model


@dataclass
class Row:
    """One sequence to generate."""

    prompt_ids: Sequence[int]
    params: SamplingParams
    steering: RowSteering | None = None
    layout: RowLayout | None = None  # default: a plain prompt of len(prompt_ids) tokens
    stream: bool = False  # produce text pieces every step (else the text comes at the end)
    tag: Any = None  # the caller's handle for this row, returned in every event
    group: Any = None  # the caller's handle for a set of rows (e.g. one request), for `cancel`
    offsets: bool = False  # report where each token's text starts (RowEvent.offsets; completions' logprobs)


@dataclass
class RowEvent:
    tag: Any
    group: Any = None
    text: str = ""  # new text (certain: it will not change)
    token: int | None = None
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # None: more to come; stop | length | cancelled | error
    detail: dict[str, Any] | None = None  # on the last event: seed, tokens, fired edits, stop reason
    # rows with `offsets`: the offsets in the text of the tokens whose start became certain with this
    # event, in token order (steering.textstream.TextAssembler.offsets; all of them by the last event)
    offsets: list[int] | None = None


@dataclass
class _Live:
    row: Row
    stream: RowRandom
    text: TextAssembler
    layout: RowLayout
    generated: list[int] = field(default_factory=list)
    next_token: int | None = None
    fed: int = 0  # generated tokens already fed through the model
    done: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    fired: dict[int, list[int]] = field(default_factory=dict)  # edit index -> token indices
    cancelled: bool = False


class BatchEngine:
    """See the module docstring. Not thread-safe: one thread calls add/step/cancel (the server's
    worker); `cancel` may come from another thread (it only sets a flag)."""

    def __init__(self, model: Model, saes: Mapping[str, SAE] | None = None, *, max_rows: int = 64,
                 max_prefill_tokens: int = 4096, lock: Any = None) -> None:
        if max_rows < 1:
            raise SteeringError(f"max_rows must be positive, got {max_rows}")
        self.model = model
        self.saes = dict(saes or {})
        self.runner = make_runner(model)
        self.tokenizer = model.tokenizer
        self.n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
        self.max_rows = max_rows
        self.max_prefill_tokens = max_prefill_tokens
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.pending: list[_Live] = []
        self.admitting: list[_Live] = []  # rows in their prefill: out of pending, not yet running
        self.running: list[_Live] = []
        self.cache: Any = None
        self._decode_editors: dict[str, BatchEditor] | None = None
        self.columns: dict[str, LatentColumns] = {}  # per SAE: latents read and edited, kept between batches
        self._cancel_lock = threading.Lock()
        self._handles: dict[str, Any] = {}  # hook point -> torch hook handle (while busy)
        self._active: dict[str, list[BatchEditor]] = {}  # editors of the forward pass running now
        self._captures: dict[str, InputCapture] = {}  # transcoders' inputs in the forward pass running now
        self._opt_in = OptInSwitch(model)  # opt-in hook points switched on while busy (a server's: on from its start)
        self.steps = 0
        self.editor_builds = 0  # decode editors built for the whole batch (tests, tuning)
        self.editor_reuses = 0  # ... and derived from the previous ones when rows left or joined
        self.max_rows_seen = 0  # the largest batch decoded so far (tests, status)
        # positions computed at prefill / cached keys read at decode, and how many of them were padding
        # (benchmarks/bench_engine.py --mixed reads them)
        self.prefill_positions = self.prefill_padding = self.kv_positions = self.kv_padding = 0

    # -- requests --------------------------------------------------------------------------
    def add(self, rows: Sequence[Row]) -> None:
        """Queue rows; they join the batch at the next step (checked here: a bad row raises)."""
        lives = []
        for r in rows:
            ids = [int(t) for t in r.prompt_ids]
            if not ids:
                raise SteeringError("a prompt needs at least one token (e.g. the BOS token)")
            if self.n_ctx is not None and len(ids) + r.params.max_new_tokens > self.n_ctx:
                raise SteeringError(
                    f"prompt ({len(ids)} tokens) + max_new_tokens ({r.params.max_new_tokens}) exceeds the model's "
                    f"context of {self.n_ctx} tokens; shorten the prompt or ask for at most "
                    f"{max(self.n_ctx - len(ids), 0)} new tokens")
            layout = r.layout or RowLayout(len(ids))
            if layout.prompt_len != len(ids):
                raise SteeringError(f"row layout is for {layout.prompt_len} tokens but the prompt has {len(ids)}")
            if r.steering is not None:  # compile positions now: a bad role/turn fails the request, not the batch
                unknown = r.steering.saes() - set(self.saes)
                if unknown:
                    raise SteeringError(f"unknown SAE {sorted(unknown)[0]!r}; known: {', '.join(self.saes)}")
                check_positions(r.steering, layout)
            live = _Live(r, RowRandom(r.params.seed), TextAssembler(self.tokenizer, r.params.stop, context_ids=ids,
                                                                      offsets=r.offsets),
                         layout)
            live.detail["seed"] = live.stream.seed
            lives.append(live)
        self.pending.extend(lives)

    def cancel(self, group: Any) -> None:
        """End the rows of `group` at the next step (finish_reason 'cancelled'); rows in their prefill
        (another thread may call this during a step) end at the step after it."""
        with self._cancel_lock:
            for live in self.pending + self.admitting + self.running:
                if live.row.group is group:
                    live.cancelled = True

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.running)

    @property
    def n_running(self) -> int:
        return len(self.running)

    # -- one step --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> list[RowEvent]:
        """Admit waiting rows (prefill), then decode one token for every running row."""
        events: list[RowEvent] = []
        self._drop_cancelled(events)
        self._admit(events)
        if self.running:
            self._decode(events)
        self._drop_finished()
        self.steps += 1
        if not self.busy and self._handles:
            self._release_hooks()
        return events

    def fail_all(self, message: str) -> list[RowEvent]:
        """End every row with finish_reason 'error' (after an exception in a step)."""
        events = [RowEvent(l.row.tag, l.row.group, finish_reason="error", detail={"error": message})
                  for l in self.pending + self.admitting + self.running]
        self.pending, self.admitting, self.running, self.cache, self._decode_editors = [], [], [], None, None
        self._active = {}
        self._release_hooks()
        return events

    # -- internals -------------------------------------------------------------------------
    def _drop_cancelled(self, events: list[RowEvent]) -> None:
        with self._cancel_lock:
            for l in self.pending + self.running:
                if l.cancelled and l.done is None:
                    l.done = "cancelled"
                    events.append(RowEvent(l.row.tag, l.row.group, finish_reason="cancelled",
                                           detail=self._final_detail(l),
                                           offsets=l.text.offsets(final=True) if l.row.offsets else None))
            self.pending = [l for l in self.pending if l.done is None]

    def _admit(self, events: list[RowEvent]) -> None:
        if not self.pending:
            return
        room = self.max_rows - len(self.running)
        if room <= 0:
            return
        take: list[_Live] = []
        longest = 0
        for l in self.pending:  # oldest first: a row never waits behind younger ones (no starvation)
            P = len(l.row.prompt_ids)
            if len(take) >= room or (take and max(longest, P) * (len(take) + 1) > self.max_prefill_tokens):
                break
            take.append(l)
            longest = max(longest, P)
        if not take:
            return
        if self.running and not self.runner.can_merge(self.cache):
            return  # this cache layout cannot take more rows: wait for the batch to drain
        with self._cancel_lock:  # `cancel` sees each row in one of pending, admitting, running
            self.pending, self.admitting = self.pending[len(take):], take
        groups = prefill_groups(take, lambda l: len(l.row.prompt_ids))
        if len(groups) > 1:
            with self.lock:  # an HF model's first answer is a forward pass
                if not self.runner.prefills_merge():  # e.g. sliding-window layers: one padded prefill
                    groups = [take]
        for group in groups:
            self._prefill(group, events)

    def _prefill(self, take: list[_Live], events: list[RowEvent]) -> None:
        """Prefill rows `take` (left padded to the longest) and add them to the running batch."""
        S = max(len(l.row.prompt_ids) for l in take)
        self.prefill_positions += len(take) * S
        self.prefill_padding += sum(S - len(l.row.prompt_ids) for l in take)
        dev = self.runner.device
        tokens = torch.zeros(len(take), S, dtype=torch.long)
        mask = torch.zeros(len(take), S, dtype=torch.long)
        index = torch.full((len(take), S), -1, dtype=torch.long)
        for b, l in enumerate(take):
            ids = l.row.prompt_ids
            P = len(ids)
            tokens[b, S - P:] = torch.tensor(list(ids), dtype=torch.long)
            mask[b, S - P:] = 1
            index[b, S - P:] = torch.arange(P)
        # the running rows' latents keep their columns (the decode batch that follows reads them)
        editors = editors_for(self.saes, [l.row.steering for l in take], [l.layout for l in take], self.columns,
                              drop_unused=False)
        for ed in editors.values():
            ed.prefill(index)
        with self._hooked(editors):
            logits, cache = self.runner.prefill(tokens.to(dev), mask.to(dev))
        self._collect(editors, take, events, decode=False)
        if self.cache is None or not self.running:
            self.cache = cache
            self._decode_editors = None
        else:
            self.cache = self.runner.merge(self.cache, cache)
            self._decode_editors = self._joined_editors(editors, take)
        with self._cancel_lock:
            self.running.extend(take)
            joined = {id(l) for l in take}
            self.admitting = [l for l in self.admitting if id(l) not in joined]
        self._take_tokens(take, logits, events)

    def _decode(self, events: list[RowEvent]) -> None:
        rows = [l for l in self.running if l.done is None]
        if len(rows) != len(self.running):
            self._drop_finished()
            rows = self.running
        if not rows:
            return
        if self._decode_editors is None:
            self._decode_editors = editors_for(self.saes, [l.row.steering for l in rows], [l.layout for l in rows],
                                               self.columns)
            self.editor_builds += 1
        editors = self._decode_editors
        index = [len(l.row.prompt_ids) + l.fed for l in rows]
        for ed in editors.values():
            ed.decode(index)
        tokens = torch.tensor([l.next_token for l in rows], dtype=torch.long, device=self.runner.device)
        T = self.runner.length(self.cache) + 1  # the cache and this step's token
        self.kv_positions += len(rows) * T
        self.kv_padding += len(rows) * T - sum(index) - len(rows)
        self.max_rows_seen = max(self.max_rows_seen, len(rows))
        with self._hooked(editors):
            logits = self.runner.decode(tokens, self.cache)
        for l in rows:
            l.fed += 1
        stopped = self._collect(editors, rows, events, decode=True)
        keep = [b for b, l in enumerate(rows) if b not in stopped]
        if keep:
            live = [rows[b] for b in keep]
            sub = logits if len(keep) == len(rows) else logits.index_select(0, torch.tensor(keep, device=logits.device))
            self._take_tokens(live, sub, events)

    def _collect(self, editors: Mapping[str, BatchEditor], rows: Sequence[_Live], events: list[RowEvent],
                 decode: bool) -> set[int]:
        """Record where conditional edits fired; finish rows whose stop trigger fired."""
        stopped: set[int] = set()
        for ed in editors.values():
            for b, j, index in ed.fired:
                rows[b].fired.setdefault(j, []).append(index)
            if decode:
                for b, trig in ed.stop_rows.items():
                    if b in stopped or rows[b].done is not None:
                        continue
                    stopped.add(b)
                    l = rows[b]
                    l.detail["stopped_by"] = (f"{trig.label or f'latent {trig.latent}'} fired on generated token "
                                              f"{l.fed - 1}")
                    self._finish(l, "stop", events)
        return stopped

    def _take_tokens(self, rows: Sequence[_Live], logits_BV: Tensor, events: list[RowEvent]) -> None:
        params = [l.row.params for l in rows]
        counts = None
        if any(p.penalised for p in params):
            counts = torch.zeros_like(logits_BV, dtype=torch.int64)
            for b, l in enumerate(rows):
                if l.generated:
                    idx = torch.tensor(l.generated, device=logits_BV.device)
                    counts[b].index_add_(0, idx, torch.ones_like(idx))
        choices = choose(logits_BV, params, [l.stream for l in rows], counts)
        for l, c in zip(rows, choices):
            self._take(l, c, events)

    def _take(self, l: _Live, c: Choice, events: list[RowEvent]) -> None:
        p = l.row.params
        if c.token in p.stop_token_ids:
            l.detail["stopped_by"] = "end-of-text token"
            self._finish(l, "stop", events, token=c)
            return
        l.generated.append(c.token)
        l.next_token = c.token
        piece, hit_stop = l.text.push(c.token, emit=l.row.stream)
        if hit_stop:
            l.detail["stopped_by"] = "stop string"
            self._finish(l, "stop", events, token=c, piece=piece)
            return
        total = len(l.row.prompt_ids) + len(l.generated)
        if len(l.generated) >= p.max_new_tokens or (self.n_ctx is not None and total >= self.n_ctx):
            self._finish(l, "length", events, token=c, piece=piece)
            return
        events.append(RowEvent(l.row.tag, l.row.group, piece, c.token, c.logprob, c.top,
                               offsets=l.text.offsets() if l.row.offsets else None))

    def _finish(self, l: _Live, reason: str, events: list[RowEvent], token: Choice | None = None, piece: str = "") -> None:
        if l.done is not None:
            return
        l.done = reason
        rest = "" if reason == "stop" and l.text.stopped else l.text.finish()
        tok = token.token if token is not None else None
        events.append(RowEvent(l.row.tag, l.row.group, piece + rest, tok, token.logprob if token else None,
                               token.top if token else None, reason, self._final_detail(l),
                               l.text.offsets(final=True) if l.row.offsets else None))

    def _final_detail(self, l: _Live) -> dict[str, Any]:
        d = dict(l.detail)
        d["completion_tokens"] = len(l.generated)
        d["prompt_tokens"] = len(l.row.prompt_ids)
        d["token_ids"] = list(l.generated)
        d["text"] = l.text.text
        if l.row.steering is not None and l.row.steering.edits:
            d["fired"] = {l.row.steering.edits[j].label or str(j): idx for j, idx in sorted(l.fired.items())}
        return d

    def _drop_finished(self) -> None:
        if all(l.done is None for l in self.running):
            return
        keep = [b for b, l in enumerate(self.running) if l.done is None]
        if not keep:
            self.running, self.cache = [], None
            self._decode_editors = None
        else:
            # one index for the cache and every SAE's tables: each tensor made from a list is a copy
            # from the host on a GPU (`.to` below is a no-op on the same device)
            keep_B = torch.tensor(keep, dtype=torch.int64, device=self.runner.device)
            self.cache = self.runner.select(self.cache, keep_B)
            self.running = [self.running[b] for b in keep]
            self._decode_editors = self._kept_editors(keep, keep_B)

    # -- the decode batch's editors when rows leave or join: their tables' rows, no rebuild --------------
    def _kept_editors(self, keep: list[int], keep_B: Tensor) -> dict[str, BatchEditor] | None:
        """The decode editors for the running rows `keep` (`keep_B`: the same as a tensor; None:
        rebuild them at the next decode)."""
        if self._decode_editors is None:
            return None
        out = {}
        for name, ed in self._decode_editors.items():
            kept = ed.rows_of(keep, keep_B.to(ed.device))
            if kept is None:
                return None
            if kept.edits_anything:  # an SAE no running row uses any more drops out
                out[name] = kept
        self.editor_reuses += 1
        return out

    def _joined_editors(self, prefill: Mapping[str, BatchEditor],
                        take: Sequence[_Live]) -> dict[str, BatchEditor] | None:
        """The decode editors for the running rows then `take` (whose prefill editors are `prefill`),
        or None (rebuild them at the next decode): an SAE only one side uses gets blank rows on
        the other."""
        if self._decode_editors is None:
            return None
        out = {}
        for name in sorted(set(self._decode_editors) | set(prefill)):  # the order editors_for adds deltas in
            old = self._decode_editors.get(name) or self._blank_editor(name, self.running)
            new = prefill.get(name) or self._blank_editor(name, take)
            both = old.joined(new)
            if both is None:
                return None
            out[name] = both
        self.editor_reuses += 1
        return out

    def _blank_editor(self, name: str, rows: Sequence[_Live]) -> BatchEditor:
        """An editor of SAE `name` for rows that edit nothing there (its current columns)."""
        return BatchEditor(self.saes[name], name, [None] * len(rows), [l.layout for l in rows],
                           kept_columns(self.columns, name, self.saes[name]), drop_unused=False)

    @contextlib.contextmanager
    def _hooked(self, editors: Mapping[str, BatchEditor]):
        """The model, inside the lock, with these editors active at their hook points.

        The engine's hooks are plain torch forward hooks on the hook points, registered once and
        kept while the engine is busy (TransformerLens's `hooks()` context resets only the hooks it
        made, so other work on the model cannot drop them); outside the engine's own forward passes
        they do nothing, and they are removed when the engine goes idle (`_release_hooks`)."""
        from saes.hookpoints import transcoder_target
        from steering.resolve import sae_hook_name

        by_hook: dict[str, list[BatchEditor]] = {}
        for name, ed in editors.items():  # a transcoder's edits land on its target hook
            sae = self.saes[name]
            writes = transcoder_target(sae, f"transcoder {name!r}") if sae.is_transcoder else sae_hook_name(sae, name)
            by_hook.setdefault(writes, []).append(ed)
        reads = {ed.reads_hook for ed in editors.values() if ed.reads_hook is not None}
        with self.lock:
            hooks = sorted(set(by_hook) | reads)
            self._opt_in.need(hooks, "steering")
            for h in hooks:
                if h not in self._handles:
                    self._handles[h] = self.model.hook_dict[h].register_forward_hook(
                        lambda module, inputs, output, h=h: self._on_hook(h, output))
            self._active, self._captures = by_hook, {h: InputCapture(h) for h in reads}
            try:
                yield
            finally:
                self._active, self._captures = {}, {}

    def _on_hook(self, hook_name: str, x: Tensor):
        eds = self._active.get(hook_name)
        out = None
        if eds:
            with sae_precision(x):
                out = _apply_editors(eds, x, self._captures)
        capture = self._captures.get(hook_name)
        if capture is not None:  # a transcoder's input, as the rest of the model sees it
            capture(x if out is None else out)
        return out

    def _release_hooks(self) -> None:
        with self.lock:
            for handle in self._handles.values():
                handle.remove()
            self._handles = {}
            self._opt_in.restore()


def _apply_editors(editors: list[BatchEditor], x: Tensor, captures: Mapping[str, InputCapture] | None = None) -> Tensor:
    shape = x.shape
    x_ND = x.reshape(shape[0] * shape[1], -1)
    out = None
    for ed in editors:  # every editor reads the unedited activation (a transcoder: its input of this forward)
        read = None
        if ed.reads_hook is not None:
            capture = (captures or {}).get(ed.reads_hook) or InputCapture(ed.reads_hook)  # none: .rows says so
            read = capture.rows(shape[0], shape[1])
        d = ed(x_ND, read)
        if d is not None:
            out = x_ND + d if out is None else out + d
    return x if out is None else out.view(shape)
