"""Per-row latent edits for a batch whose rows steer differently (the batched engine's hook).

Shape key: B rows, S positions in this forward, N = B*S activation rows, U latents of the SAE
that some row edits, tests (trigger) or watches (stop), D width at the hook.

Each row brings its own edits (`RowSteering`: resolved feature edits, stop triggers). For one SAE
the batch is one set of tensors over the union U of latents involved: coefficients c1 [B, U] and
c0 [B, U] (zero where a row does not edit that latent), so one row's edit never touches another
row, and the change of every activation row is one matrix product

    coef_NU = (a_NU * c1 + c0) * applies_NU * trigger_NU,     delta_ND = coef_NU @ W_dec[U]

with a_NU the latents' current activations (`LatentReader`, exact for every architecture, read
only when some row needs them, each row as if alone: which latents fire does not depend on the
other rows of the batch), `applies` whether each row's edit covers the token (its
positions), and `trigger` whether its condition holds there (or 1 without one).

Positions are compiled per row against the row's prompt (`RowLayout`: length, and for chat
prompts the role and message index of every token) into a mask over prompt tokens, plus "every
generated token" and/or a set of generated offsets (token indices at or beyond the prompt).
Index 0 is the first prompt token (BOS included); negative indices count back from the end of
the prompt; role:/turn: need a chat prompt (see `steering.chat`). The semantics are those of
`steering.steer` (`steering.positions`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from steering.interventions import op_coefficients
from steering.latentcolumns import LatentColumns
from steering.resolve import sae_hook_name
from steering.spec import SteeringError, chat_position

if TYPE_CHECKING:
    from saes.base import SAE


@dataclass(frozen=True)
class RowLayout:
    """What positions of one row mean: its prompt length, and (chat) each prompt token's role and turn."""

    prompt_len: int
    roles: Sequence[str] | None = None
    turns: Sequence[int] | None = None
    n_messages: int | None = None
    why_no_roles: str | None = None


@dataclass(frozen=True)
class RowEdit:
    """One resolved feature edit of one row (raw units)."""

    sae: str
    latent: int
    op: str
    value: float
    positions: Any
    trigger: tuple[int, float] | None = None
    label: str = ""


@dataclass(frozen=True)
class StopTrigger:
    """Stop the row once `feature` of SAE `sae` is above `above` on a generated token."""

    sae: str
    latent: int
    above: float
    label: str = ""


@dataclass
class RowSteering:
    edits: list[RowEdit] = field(default_factory=list)
    stops: list[StopTrigger] = field(default_factory=list)

    def saes(self) -> set[str]:
        return {e.sae for e in self.edits} | {s.sae for s in self.stops}


@dataclass(frozen=True)
class CompiledPositions:
    prompt: tuple[bool, ...]  # per prompt token
    every_generated: bool
    generated: frozenset[int]  # generated offsets (0 = the first generated token)

    def at(self, index: int, prompt_len: int) -> bool:
        if index < prompt_len:
            return self.prompt[index]
        return self.every_generated or (index - prompt_len) in self.generated


def compile_positions(positions: Any, layout: RowLayout, label: str = "edit") -> CompiledPositions:
    P = layout.prompt_len
    none = (False,) * P
    if positions == "all":
        return CompiledPositions((True,) * P, True, frozenset())
    if positions == "prompt":
        return CompiledPositions((True,) * P, False, frozenset())
    if positions == "generated":
        return CompiledPositions(none, True, frozenset())
    if positions == "last":
        return CompiledPositions(none[:-1] + (True,) if P else none, False, frozenset())
    chat = chat_position(positions)
    if chat is not None:
        kind, arg = chat
        if layout.roles is None or layout.turns is None:
            why = layout.why_no_roles or "the prompt is plain text, not chat messages"
            raise SteeringError(f"{label}: positions {positions!r} need per-token roles, which this prompt lacks: {why}")
        if kind == "role":
            if arg != "assistant" and arg not in layout.roles:  # it would change nothing (as turn:I beyond the end)
                have = ", ".join(dict.fromkeys(layout.roles))
                raise SteeringError(f"{label}: positions {positions!r}: the prompt has no {arg!r} message (its roles: "
                                    f"{have}); the edit would change nothing")
            return CompiledPositions(tuple(r == arg for r in layout.roles), arg == "assistant", frozenset())
        turn = int(arg)
        n = layout.n_messages or 0
        t = turn if turn >= 0 else n + turn
        if not 0 <= t < n:
            raise SteeringError(f"{label}: turn {turn} does not exist; the prompt has {n} message(s)")
        return CompiledPositions(tuple(x == t for x in layout.turns), False, frozenset())
    if isinstance(positions, tuple):
        prompt = list(none)
        gen = set()
        for i in positions:
            j = i if i >= 0 else P + i
            if 0 <= j < P:
                prompt[j] = True
            elif j >= P:
                gen.add(j - P)
        return CompiledPositions(tuple(prompt), False, frozenset(gen))
    raise SteeringError(f"{label}: unknown positions {positions!r}")


def check_positions(steering: RowSteering, layout: RowLayout) -> None:
    """Compile every edit's positions against this row's prompt (SteeringError if one does not fit),
    without building anything: what a request is checked with before it joins a batch."""
    for e in steering.edits:
        compile_positions(e.positions, layout, e.label or f"latent {e.latent}")


def _used_latents(rows: Sequence[RowSteering | None], sae_name: str) -> dict[int, None]:
    """Every latent the rows edit, test (trigger) or watch (stop) at this SAE, in first-use order."""
    used: dict[int, None] = {}
    for r in rows:
        if r is None:
            continue
        for e in r.edits:
            if e.sae == sae_name:
                used[e.latent] = None
                if e.trigger is not None:
                    used[e.trigger[0]] = None
        for s in r.stops:
            if s.sae == sae_name:
                used[s.latent] = None
    return used


class BatchEditor:
    """The edits of the rows of one forward at one SAE (see the module docstring).

    `rows[b]` is row b's `RowSteering` (or None) and `layouts[b]` its layout. Before each forward
    the engine calls `prefill(index_BS)` (token index of each column, -1 for padding) or
    `decode(index_B)`; the hook calls `editor(x_ND)`; afterwards `fired` lists (row, edit,
    token index) where a conditional edit applied and `stop_rows` the rows whose stop trigger
    fired on this step's token (with the trigger). When rows leave or join, `rows_of` and
    `joined` give the editor of the new batch from the tables' rows (no rebuild) while the SAE's
    columns are unchanged.
    """

    def __init__(self, sae: SAE, sae_name: str, rows: Sequence[RowSteering | None], layouts: Sequence[RowLayout],
                 columns: LatentColumns | None = None, drop_unused: bool = True) -> None:
        self.sae_name = sae_name
        # a transcoder reads its latents at its input hook and writes at its target (the engine captures the input)
        self.reads_hook: str | None = sae_hook_name(sae, sae_name) if sae.is_transcoder else None
        self.B = len(rows)
        dev, dt = sae.W_dec.device, sae.W_dec.dtype
        # the columns (latents, their reader and decoder rows) outlive this batch when the engine keeps them
        columns = columns if columns is not None else LatentColumns(sae)
        columns.cover(_used_latents(rows, sae_name), drop_unused)
        self.columns = columns
        self.U = columns.U
        self.ids_U = columns.ids_U
        self.layouts = list(layouts)
        self.dtype = dt
        self.device = dev
        self.columns_build = columns.builds  # the column set these tables are for
        self.W_dec_UD = columns.W_dec_UD
        self._compile(rows, columns.col, dt, dev)
        self._compile_decode_coverage(dev)
        self._flags()
        self._mode: str | None = None
        self._applies: Tensor | None = None
        self._index: Any = None

    def _compile(self, rows: Sequence[RowSteering | None], col: dict[int, int], dt, dev) -> None:
        """The [B, U] tables (c1, c0, trigger column and threshold, has a trigger, stop threshold,
        need), written at the few (row, column) pairs the rows use (the engine rebuilds them
        whenever rows join or leave: a table is one scatter, not B * U Python values); fills
        `edit_at`, `rules` (each edit's positions compiled against its row's layout) and `stop_of`."""
        self.edit_at: dict[tuple[int, int], int] = {}  # (b, u) -> index of the row's edit
        self.rules: dict[tuple[int, int], CompiledPositions] = {}
        self.stop_of: dict[tuple[int, int], StopTrigger] = {}
        self.coef_at: dict[tuple[int, int], tuple[float, float]] = {}  # (b, u) -> (c1, c0)
        self.trig_at: dict[tuple[int, int], None] = {}  # (b, u) of conditional edits
        edit_b, edit_u, c1, c0 = [], [], [], []
        trig_b, trig_u, trig_col, trig_thr = [], [], [], []
        need: dict[tuple[int, int], None] = {}  # (row, latent) activations some computation uses: TopK reads only those
        stop_thr: dict[tuple[int, int], float] = {}
        for b, r in enumerate(rows):
            if r is None:
                continue
            for j, e in enumerate(r.edits):
                if e.sae != self.sae_name:
                    continue
                u = col[e.latent]
                if (b, u) in self.edit_at:
                    raise SteeringError(f"{e.label or e.latent}: latent {e.latent} is edited twice in one request")
                self.edit_at[(b, u)] = j
                self.rules[(b, u)] = compile_positions(e.positions, self.layouts[b], e.label or f"latent {e.latent}")
                a1, a0 = op_coefficients(e.op, e.value)
                self.coef_at[(b, u)] = (a1, a0)
                edit_b.append(b), edit_u.append(u), c1.append(a1), c0.append(a0)
                if a1 != 0:
                    need[(b, u)] = None
                if e.trigger is not None:
                    t = col[e.trigger[0]]
                    self.trig_at[(b, u)] = None
                    trig_b.append(b), trig_u.append(u), trig_col.append(t), trig_thr.append(e.trigger[1])
                    need[(b, t)] = None
            for s in r.stops:
                if s.sae == self.sae_name:
                    u = col[s.latent]
                    stop_thr[(b, u)] = min(stop_thr.get((b, u), float("inf")), s.above)  # the lowest of several
                    self.stop_of[(b, u)] = s
                    need[(b, u)] = None
        U = self.U

        def at(pairs: Iterable[tuple[int, int]]) -> Tensor:  # flat positions of (b, u) pairs in a [B, U] table
            return torch.tensor([b * U + u for b, u in pairs], dtype=torch.int64)

        def table(flat: Tensor, values: list, fill, dtype) -> Tensor:
            t = torch.full((self.B * U,), fill, dtype=dtype)
            if flat.numel():
                t[flat] = torch.tensor(values, dtype=dtype)
            return t.view(self.B, U).to(dev)

        edits, trigs = at(zip(edit_b, edit_u)), at(zip(trig_b, trig_u))
        self.c1_BU, self.c0_BU = table(edits, c1, 0.0, dt), table(edits, c0, 0.0, dt)
        self.trig_col_BU = table(trigs, trig_col, 0, torch.int64)
        self.trig_thr_BU = table(trigs, trig_thr, 0.0, dt)
        self.has_trig_BU = table(trigs, [True] * len(trig_b), False, torch.bool)
        self.stop_thr_BU = table(at(stop_thr), list(stop_thr.values()), float("inf"), dt)
        self.need_BU = table(at(need), [True] * len(need), False, torch.bool)

    def _compile_decode_coverage(self, dev) -> None:
        """Decode-time coverage: every-generated rules are fixed (this table), offset sets are looked
        up per step (`offset_rules`, see `_flags`)."""
        pairs = [bu for bu, rule in self.rules.items() if rule.every_generated]
        every = torch.zeros(self.B, self.U, dtype=torch.bool)
        if pairs:
            every_b, every_u = zip(*pairs)
            every[list(every_b), list(every_u)] = True
        self.every_generated_BU = every.to(dev)

    def _flags(self) -> None:
        """What the hook may skip, from the entries (no tensor read)."""
        self.conditional = bool(self.trig_at)
        self.watches_stops = bool(self.stop_of)
        self.c0_zero = all(c0 == 0 for _, c0 in self.coef_at.values())
        self.reads = any(c1 != 0 for c1, _ in self.coef_at.values()) or self.conditional or self.watches_stops
        self.reader = self.columns.reader if self.reads and self.U else None
        self.offset_rules = [(b, u, r) for (b, u), r in self.rules.items() if not r.every_generated and r.generated]
        # every edit covers every generated token (the common case): decode steps skip the mask (a
        # pair without an edit has c1 = c0 = 0, so no change there either)
        self.decode_covers_all = bool(self.rules) and all(r.every_generated for r in self.rules.values())
        self.fired: list[tuple[int, int, int]] = []  # (row, edit index, token index), after a forward
        self.stop_rows: dict[int, StopTrigger] = {}

    # -- rows leaving and joining: the tables' rows, no rebuild ----------------------------------
    _TABLES = ("c1_BU", "c0_BU", "trig_col_BU", "trig_thr_BU", "has_trig_BU", "stop_thr_BU", "need_BU",
               "every_generated_BU")
    _ENTRIES = ("edit_at", "rules", "stop_of", "coef_at", "trig_at")

    @property
    def current(self) -> bool:
        """Whether the SAE's columns are still those the tables were built for, and its weights
        unchanged since (an in-place change must rebuild the reader's and decoder's copies)."""
        return self.columns_build == self.columns.builds and self.columns.weights_current()

    def rows_of(self, keep: Sequence[int], keep_B: Tensor | None = None) -> BatchEditor | None:
        """This editor for rows `keep` of its batch only, in that order (None: the columns changed
        since it was built, so it cannot be reused). `keep_B`: `keep` as an int64 tensor already on
        the editor's device (the engine makes one per batch change for all its SAEs: on a GPU each
        tensor made from a list is a copy from the host)."""
        if not self.current:
            return None
        new = {b: i for i, b in enumerate(keep)}
        idx = keep_B if keep_B is not None else torch.tensor(list(keep), dtype=torch.int64, device=self.device)
        tables = {t: getattr(self, t).index_select(0, idx) for t in self._TABLES}
        entries = {e: {(new[b], u): v for (b, u), v in getattr(self, e).items() if b in new} for e in self._ENTRIES}
        return self._derived([self.layouts[b] for b in keep], tables, entries)

    def joined(self, other: BatchEditor) -> BatchEditor | None:
        """This editor's rows then `other`'s (same SAE; None unless both are for its current columns)."""
        if other.columns is not self.columns or not (self.current and other.current):
            return None
        return self._derived(self.layouts + other.layouts,
                             {t: torch.cat([getattr(self, t), getattr(other, t)]) for t in self._TABLES},
                             {e: {**getattr(self, e), **{(b + self.B, u): v for (b, u), v in getattr(other, e).items()}}
                              for e in self._ENTRIES})

    def _derived(self, layouts: list[RowLayout], tables: dict[str, Tensor], entries: dict[str, dict]) -> BatchEditor:
        ed = object.__new__(BatchEditor)
        ed.__dict__.update(self.__dict__, **tables, **entries)
        ed.B, ed.layouts = len(layouts), layouts
        ed._mode, ed._applies, ed._index = None, None, None
        ed._flags()
        return ed

    @property
    def edits_anything(self) -> bool:
        """Whether some row edits or watches a latent here."""
        return bool(self.edit_at or self.stop_of)

    @property
    def active(self) -> bool:
        return self.U > 0

    # -- before a forward ------------------------------------------------------------------
    def prefill(self, index_BS: Tensor) -> None:
        """A prefill forward: `index_BS` [B, S] holds each column's token index (-1: padding)."""
        B, S = index_BS.shape
        applies = torch.zeros(B, S, self.U, dtype=torch.bool)
        for (b, u), rule in self.rules.items():
            P = self.layouts[b].prompt_len
            if any(rule.prompt):
                applies[b, S - P :, u] = torch.tensor(rule.prompt, dtype=torch.bool)
        self._mode, self._index = "prefill", index_BS
        self._applies = applies.reshape(B * S, self.U).to(self.device)
        self.fired, self.stop_rows = [], {}

    def decode(self, index_B: Sequence[int]) -> None:
        """A decode forward: row b feeds its token at index `index_B[b]` (at or after its prompt)."""
        applies = self.every_generated_BU
        if self.offset_rules:
            applies = applies.clone()
            for b, u, rule in self.offset_rules:
                applies[b, u] = rule.at(index_B[b], self.layouts[b].prompt_len)
        self._mode, self._index, self._applies = "decode", index_B, applies
        self.fired, self.stop_rows = [], {}

    # -- in the hook -----------------------------------------------------------------------
    def __call__(self, x_ND: Tensor, read_ND: Tensor | None = None) -> Tensor | None:
        """The change of the activation rows [N, D] (None: nothing to change on this forward).
        `read_ND`: a transcoder's input rows of the same positions, where its latents are read."""
        if not self.U:
            return None
        applies = self._applies
        assert applies is not None, "BatchEditor used without prefill()/decode()"
        N = x_ND.shape[0]
        reps = N // self.B  # S positions per row
        c1, c0 = self.c1_BU, self.c0_BU
        if reps != 1:
            c1 = c1.repeat_interleave(reps, dim=0)
            c0 = c0.repeat_interleave(reps, dim=0)
        need = self.need_BU if reps == 1 else self.need_BU.repeat_interleave(reps, dim=0)
        a_NU = self.reader.read(x_ND if read_ND is None else read_ND, need) if self.reader is not None else None
        if a_NU is None and (self.conditional or self.watches_stops):  # None: every needed activation is 0
            a_NU = x_ND.new_zeros(N, self.U, dtype=self.dtype)
        if a_NU is not None:
            coef = torch.addcmul(c0, a_NU, c1)
        elif self.c0_zero:  # scale / ablate only, every latent off: nothing changes
            return None
        else:
            coef = c0.expand(N, -1)
        on = applies
        if self.conditional:
            assert a_NU is not None
            col = self.trig_col_BU if reps == 1 else self.trig_col_BU.repeat_interleave(reps, dim=0)
            thr = self.trig_thr_BU if reps == 1 else self.trig_thr_BU.repeat_interleave(reps, dim=0)
            has = self.has_trig_BU if reps == 1 else self.has_trig_BU.repeat_interleave(reps, dim=0)
            fires = a_NU.gather(1, col) > thr
            on = applies & (fires | ~has)
            hit = on & has
            if bool(hit.any()):
                self._record_fired(hit, reps)
        if self.watches_stops and self._mode == "decode":
            assert a_NU is not None
            stop = a_NU > self.stop_thr_BU
            if bool(stop.any()):
                for b, u in stop.nonzero().tolist():
                    self.stop_rows.setdefault(b, self.stop_of[(b, u)])
        if self._mode == "decode" and self.decode_covers_all and not self.conditional:
            return (coef @ self.W_dec_UD).to(x_ND.dtype)  # no mask to apply, nothing to check
        if not bool(on.any()):
            return None
        return ((coef * on) @ self.W_dec_UD).to(x_ND.dtype)

    def _record_fired(self, hit_NU: Tensor, reps: int) -> None:
        for n, u in hit_NU.nonzero().tolist():
            b, s = divmod(n, reps)
            j = self.edit_at.get((b, u))
            if j is None:
                continue
            index = int(self._index[b, s]) if self._mode == "prefill" else int(self._index[b])
            self.fired.append((b, j, index))


def editors_for(saes: Mapping[str, Any], rows: Sequence[RowSteering | None], layouts: Sequence[RowLayout],
                columns: dict[str, LatentColumns] | None = None, drop_unused: bool = True) -> dict[str, BatchEditor]:
    """One `BatchEditor` per SAE that some row uses. `columns` (the engine's, kept between
    batches): each SAE's `LatentColumns`, added here when missing (None: fresh ones);
    `drop_unused`: see `LatentColumns.cover`."""
    names = set()
    for r in rows:
        if r is not None:
            names |= r.saes()
    out = {}
    for name in sorted(names):
        if name not in saes:
            raise SteeringError(f"unknown SAE {name!r}; known: {', '.join(saes)}")
        cols = kept_columns(columns, name, saes[name]) if columns is not None else None
        ed = BatchEditor(saes[name], name, rows, layouts, cols, drop_unused)
        if ed.active:
            out[name] = ed
    return out


def kept_columns(columns: dict[str, LatentColumns], name: str, sae: SAE) -> LatentColumns:
    """SAE `name`'s columns in `columns` (the engine's, kept between batches), new ones when
    missing or made for another SAE object under that name."""
    cols = columns.get(name)
    if cols is None or cols.sae is not sae:
        cols = columns[name] = LatentColumns(sae)
    return cols
