"""`saesteer train`'s data: the batch source (a cache, or the model run on text), the CE-loss
evaluation's model and held-out contexts, and the provenance the SAE folders record."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple


class TrainData(NamedTuple):
    """What `prepare_data` gives the run: the batch source, the CE evaluation (or None), the provenance
    for the SAE folders, and the batches of the held-out rows (--holdout-cache; None: `source`'s first rows)."""

    source: Any
    model_eval: Any
    provenance: dict
    holdout: Any = None


def prepare_data(run_cfg, data_cfg, text_cfg, coll=None, allow_model_mismatch: bool = False, check_init=None,
                 text_given: Mapping[str, str] | None = None):
    """The batch source, the CE evaluation (or None) and the provenance for the SAE folders.

    Data parallel (`coll`): this rank's reader (rows r*B/W..(r+1)*B/W of every global batch of
    --batch-size rows); only rank 0 loads the model for the CE evaluation. `check_init(prov, d_in,
    d_out, transcoder)`: called before the model loads (minutes for a real one) with what the data
    tell of the run by then (the cache's record; for text, its hook and BOS policy), so that an
    --init-from SAE that does not fit is refused at once. `text_given`: the text settings (TextConfig
    fields) the flags or the config file give, each with how it was said ("--context-length",
    "run.toml's text.context_length"; None: all of them, unchecked): without the separator,
    a pretokenized dataset's rows say it (`training.text.text_as_read`); with a cache, one that
    differs from how the cache read its text is refused (`check_cached_text`)."""
    t = run_cfg.train
    rank, world = (coll.rank, coll.world_size) if coll is not None else (0, 1)
    if world > 1 and not data_cfg.cache:
        raise ValueError("training with several processes (torchrun) reads an activation cache: run `saesteer cache` "
                         "first and pass --cache (without one, every rank would run the model over the same text)")
    if world > 1 and t.batch_size % world:
        raise ValueError(f"--batch-size {t.batch_size} is the global batch and must split evenly over the {world} "
                         f"ranks; use a multiple of {world}")
    if data_cfg.holdout_cache and not data_cfg.cache:
        raise ValueError(f"--holdout-cache {data_cfg.holdout_cache} holds the held-out rows of a run on an activation "
                         f"cache: pass --cache too (without one, held-out contexts come from the text's --eval-split)")
    if data_cfg.cache:
        return _from_cache(run_cfg, data_cfg, rank, world, allow_model_mismatch, check_init,
                           lambda man: check_cached_text(data_cfg.cache, man, text_cfg, text_given))
    if check_init is not None:  # the width and the model are known once it is loaded: the run checks those
        check_init({"hook_name": data_cfg.hook, "hook_name_out": data_cfg.target_hook, "dataset": text_cfg.dataset,
                    "bos_policy": text_cfg.bos_policy}, None, None, data_cfg.target_hook is not None)
    return _from_model(run_cfg, data_cfg, text_cfg, text_given is None or "separator" in text_given)


def _cache_reader(data_cfg, t, rank: int, world: int, cache: str | None = None, hook: str | None = None,
                  epochs: int | None = None, partition: str | None = None):
    """This rank's reader of the cache (`cache`, default --cache; `hook`, default --hook; `epochs`
    None: endless): its own shards (`partition`, default --dp-partition, "shards"), or its slice of
    every global batch of the one stream ("rows")."""
    from training.reader import CacheReader

    cache, hook = cache or data_cfg.cache, hook or data_cfg.hook
    if world > 1 and (partition or data_cfg.dp_partition) == "shards":  # this rank's own shards, its own stream
        from training.manifest import read_manifest
        from training.reader import rank_shards

        mine = rank_shards([sh.rows for sh in read_manifest(cache).shards], rank, world)
        return CacheReader(cache, t.batch_size // world, hook=hook, seed=t.seed, epochs=epochs,
                           buffer_rows=data_cfg.reader_buffer_rows, shards=mine, target_hook=data_cfg.target_hook,
                           **reader_dtype(t.device))
    # rows: rank r keeps rows [r*B/W, (r+1)*B/W) of each global batch of the one stream
    return CacheReader(cache, t.batch_size // world, hook=hook, seed=t.seed, epochs=epochs,
                       buffer_rows=data_cfg.reader_buffer_rows, rank=rank, world_size=world,
                       target_hook=data_cfg.target_hook, **reader_dtype(t.device))


def _holdout_reader(data_cfg, t, rank: int, world: int, reader):
    """The reader of --holdout-cache (one pass), checked against the training cache's `reader` first
    (`training.holdout_cache.check_holdout_cache`)."""
    from training.holdout_cache import check_holdout_cache
    from training.manifest import read_manifest

    held = read_manifest(data_cfg.holdout_cache)
    hooks = [reader.hook] + ([reader.target_hook] if reader.target_hook else [])
    check_holdout_cache(reader.manifest, data_cfg.cache, held, data_cfg.holdout_cache, hooks)
    if held.total_rows < t.holdout_tokens and rank == 0:  # one note for the run, not one per rank
        print(f"note: --holdout-cache {data_cfg.holdout_cache} holds {held.total_rows:,} rows, fewer than --holdout-tokens "
              f"{t.holdout_tokens:,}: the held-out set is those {held.total_rows:,} rows")
    # rows: every rank its slice of the one stream (a small held-out cache may have fewer shards than ranks)
    return _cache_reader(data_cfg, t, rank, world, cache=data_cfg.holdout_cache, hook=reader.hook, epochs=1,
                         partition="rows")


def check_cached_text(cache, man, text_cfg, text_given: Mapping[str, str] | None) -> None:
    """Refuse a text setting given (a flag, the config file's text section) other than the one the
    cache `man` read its text with: training reads the text as it was cached (and the CE evaluation
    packs held-out text so), so the setting would do nothing, silently."""
    from training.sources import TEXT_READING, text_config_from_manifest

    cached = text_config_from_manifest(man)
    recorded = man.settings.get("dataset") or {}
    was = {"dataset": recorded.get("name") or "toy", "split": recorded.get("split") or "train"}
    wrong = [k for k in TEXT_READING if k in (text_given or ()) and not _reads_as_cached(k, getattr(text_cfg, k),
                                                                                           cached, man.settings)]
    wrong = [k for k in ("dataset", "split") if k in (text_given or ()) and getattr(text_cfg, k) != was[k]
             and not (k == "dataset" and _names_cached_files(text_cfg.dataset, recorded))] + wrong
    if wrong:
        said = ", ".join(f"{text_given[k]} {getattr(text_cfg, k)} (the cache's: {was.get(k, getattr(cached, k))})"
                         for k in wrong)
        raise ValueError(f"{said}: the cache {cache} holds text read with its own settings, which --cache trains on "
                         f"as they are; leave {'it' if len(wrong) == 1 else 'them'} out, or cache the text again with "
                         f"{'it' if len(wrong) == 1 else 'them'}")


def _names_cached_files(dataset: str, recorded: dict) -> bool:
    """Whether the local `dataset` named otherwise than the cache recorded it (from another folder,
    by an absolute path, moved) holds the files the cache read: the same names below their folder
    and sizes in the cache's split, as a resume compares them (`training.text.dataset_spec`). A hub
    id is the cache's only as the same id."""
    from training.splits import looks_local
    from training.text import TextConfig, dataset_spec

    if dataset == "toy" or not looks_local(dataset) or "files" not in recorded:
        return False
    try:
        files = dataset_spec(TextConfig(dataset=dataset, split=recorded.get("split") or "train"))["files"]
    except (OSError, ValueError):  # not there, or no such split: not the cache's text
        return False
    return files == recorded["files"]


def _reads_as_cached(key: str, given, cached, settings: dict) -> bool:
    """Whether the text setting `key` given reads the text as the cache read it (`cached`: its text
    config; `settings`: its manifest's): the cache's value; one the cache's dataset made moot when it
    was read (`DocumentSource`): txt_documents of other files than .txt, a pretokenized dataset's
    "text" column (its token column is read where there is no text) and separator "rows" (as its
    rows hold); or a separator that puts the same ids between documents (GPT-2's BOS is its EOS);
    special_tokens "auto" (it decided when the cache was made)."""
    dataset = settings.get("dataset") or {}
    if given == getattr(cached, key) or (key, given) == ("special_tokens", "auto"):  # auto: as the cache decided
        return True
    if key == "txt_documents":
        return "txt_documents" not in dataset  # recorded for local .txt files only: others ignore it
    if dataset.get("pretokenized") and (key, given) in (("text_column", "text"), ("separator", "rows")):
        return True
    return key == "separator" and _same_between_documents(cached, given, settings.get("tokenizer") or {})


def _same_between_documents(cached, separator: str, tokenizer: dict) -> bool:
    """Whether `separator` packs `cached`'s text with the ids its own separator puts between documents,
    by the cache's tokenizer's special tokens (its manifest's record)."""
    import dataclasses

    from training.packing import SpecialTokens, between_documents

    if cached.separator == "rows" or separator == "rows" or tokenizer.get("bos_id") is None:
        return False
    specials = SpecialTokens(tokenizer.get("bos_id"), tokenizer.get("eos_id"), tokenizer.get("pad_id"), ())
    try:
        other = dataclasses.replace(cached, separator=separator)
    except ValueError:  # not a separator for the cache's BOS policy
        return False
    return between_documents(other, specials) == between_documents(cached, specials)


def _from_cache(run_cfg, data_cfg, rank: int, world: int, allow_model_mismatch: bool, check_init=None,
                check_text=None):
    """Batches from an activation cache; the CE evaluation with the cache's model (rank 0).
    `check_text(manifest)`: the text settings given checked against the cache's, once it is open."""
    from training.sources import cache_provenance

    t = run_cfg.train
    reader = _cache_reader(data_cfg, t, rank, world)
    man = reader.manifest
    if check_text is not None:
        check_text(man)
    recorded = man.recorded_model()
    if data_cfg.process_weights and recorded is not None and not recorded.processed:
        raise ValueError(f"the cache {data_cfg.cache} was made with {recorded.id}'s raw weights, so --process-weights "
                         f"does not apply; leave it out, or cache again with `saesteer cache --process-weights`")
    prov = cache_provenance(man, data_cfg.cache, reader.hook)
    if reader.target_hook is not None:
        prov["hook_name_out"] = reader.target_hook
    prov["reader_buffer_rows"] = data_cfg.reader_buffer_rows  # with train.seed: which rows were held out
    if world > 1:
        prov.update(world_size=world, dp_partition=data_cfg.dp_partition)
    if check_init is not None:
        check_init(prov, reader.d_in, reader.d_out, reader.target_hook is not None)
    holdout = None
    if data_cfg.holdout_cache:  # as `train(holdout=...)` records it (the demo's)
        holdout = _holdout_reader(data_cfg, t, rank, world, reader)
        prov.update(holdout_cache=str(Path(data_cfg.holdout_cache).resolve()), holdout_trained_on=False)
    else:
        prov["holdout_trained_on"] = _holdout_trained_on(t, man.total_rows, data_cfg.cache)
    model = None
    if data_cfg.model_eval and rank == 0:
        model = _eval_model(data_cfg.model, man, data_cfg.cache, allow_model_mismatch)
    if model is None or not _can_splice(model, reader.target_hook or reader.hook):
        return TrainData(reader, None, prov, holdout)
    return TrainData(reader, _cache_model_eval(run_cfg, data_cfg, reader, model, prov, allow_model_mismatch), prov,
                     holdout)


def _holdout_trained_on(t, rows: int, cache) -> bool:
    """Whether the held-out rows are trained on (recorded in the run's provenance), told to the user with
    the passes the run makes over the cache when more than one: the held-out rows are the first rows of the
    reader's stream, which from its second pass on holds them again, so the held-out figures are then
    on trained-on rows; a held-out set as large as the cache repeats the cache and is all trained on."""
    asked = t.total_tokens + t.holdout_tokens  # the held-out rows come out of the same stream first
    if t.holdout_tokens >= rows:
        print(f"warning: --holdout-tokens {t.holdout_tokens:,} is not less than the {rows:,} rows of the cache {cache}: "
              f"the held-out set repeats the cache and every held-out row is trained on (the held-out figures are "
              f"training-set figures); give --holdout-tokens {max(1, rows // 10):,} (a tenth) or cache more tokens")
        return True
    if asked <= rows:
        return False
    print(f"note: {t.total_tokens:,} training tokens (+{t.holdout_tokens:,} held out) asked for, the cache holds "
          f"{rows:,} rows: the reader makes {asked / rows:.1f} passes over it, and from the second on the SAEs "
          f"train on the {t.holdout_tokens:,} held-out rows too (the held-out EV and dead figures are then on "
          f"trained-on rows); cache more tokens, {asked:,} rows or more, to keep them held out")
    return True


def _cache_model_eval(run_cfg, data_cfg, reader, model, prov: dict, allow_model_mismatch: bool):
    """The CE evaluation of a cached run: held-out text when there is some (else the contexts of
    --holdout-cache, else the cache's last shard, with a note); fills prov's model identity (older
    caches) and ce_eval_data."""
    from training.evaluate import ModelEval
    from training.sources import contexts_from_cache, text_config_from_manifest, text_documents_read

    man = reader.manifest
    if prov.get("model_identity") is None and not allow_model_mismatch:  # a cache from an older version:
        from saesteer.models import model_identity  # its id matched this model, whose record is complete

        ident = model_identity(model)
        prov.update(model_identity=ident.to_json(), model_name=ident.saelens_model_name)
    n = run_cfg.eval.ce_contexts
    held, why = _heldout(text_config_from_manifest(man), data_cfg, model.tokenizer, n, text_documents_read(man),
                         from_cache=True)
    if held is None and data_cfg.holdout_cache:  # the held-out cache keeps its contexts' tokens: never trained on
        print(f"note: CE evaluation on contexts of --holdout-cache {data_cfg.holdout_cache}: {why}")
        tokens = contexts_from_cache(data_cfg.holdout_cache, n)
        prov["ce_eval_data"] = {"cache": str(data_cfg.holdout_cache), "contexts": int(tokens.shape[0]),
                                "trained_on": False}
    elif held is None:
        print(f"note: CE evaluation on contexts of the cache's last shard (trained-on text): {why}; "
              f"{NO_HELDOUT_FIX}")
        tokens = contexts_from_cache(data_cfg.cache, n, man)
        prov["ce_eval_data"] = {"cache": str(data_cfg.cache), "contexts": int(tokens.shape[0]), "trained_on": True}
    else:
        tokens, prov["ce_eval_data"] = held.tokens_NL, held.provenance()
    keep = tuple(int(i) for i in man.settings.get("excluded_token_ids") or ())
    if reader.target_hook is not None:  # the transcoder replaces its target, reading its input hook
        from saes.hookpoints import check_transcoder_hooks

        check_transcoder_hooks(model, reader.hook, reader.target_hook, d_in=reader.d_in, d_out=reader.d_out)
        return ModelEval(model, reader.target_hook, tokens, keep, input_hook=reader.hook)
    return ModelEval(model, reader.hook, tokens, keep)


def _from_model(run_cfg, data_cfg, text_cfg, separator_given: bool = True):
    """No cache: activations straight from the model (one pass over the text; resume replays it)."""
    from saesteer.models import check_hook_names, load_model, model_identity, start_model_spec
    from training.evaluate import ModelEval
    from training.live import model_batches
    from training.packing import read_special_tokens
    from training.sources import TEXT_READING
    from training.text import resolve_data, text_as_read

    text_cfg = text_as_read(text_cfg)  # the dataset and its column checked before the model loads (minutes)
    t = run_cfg.train
    model = load_model(start_model_spec(data_cfg.model, text_cfg.dataset), device=t.device,  # toy for toy text only
                       process_weights=data_cfg.process_weights)
    # recorded as read: the column a pretokenized dataset's ids are in, the separator its rows hold
    text_cfg = text_as_read(text_cfg, model.tokenizer, separator_given)
    # special tokens written out: read as auto decides once, here; recorded so (data.text), eval reads held-out text so
    text_cfg, reading = read_special_tokens(text_cfg, model.tokenizer)
    if reading.note():
        print(f"note: {reading.note()}")
    hook = data_cfg.hook or f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    check_hook_names(model, hook)
    target = data_cfg.target_hook
    if target is not None:
        from saes.hookpoints import check_transcoder_hooks

        check_transcoder_hooks(model, hook, target)
    source = _Replayable(lambda: model_batches(model, text_cfg, hook, t.batch_size, seed=t.seed, target_hook=target))
    ident = model_identity(model)
    data = resolve_data(text_cfg)  # the split's files (and a clear error for a split the data lacks)
    from saes.processing import processing_record

    prov = {"model": ident.id, "model_revision": ident.revision, "model_identity": ident.to_json(),
            "model_processing": processing_record(model),
            "model_name": ident.saelens_model_name,
            "hook_name": hook, **({"hook_name_out": target} if target else {}),
            "dataset": text_cfg.dataset, "dataset_split": data.split,
            "dataset_files": [str(p) for p in data.files] or None,
            "context_size": text_cfg.context_length, "prepend_bos": text_cfg.bos_policy == "prepend",
            "bos_policy": text_cfg.bos_policy,
            # how the text was read and packed (a cache's manifest holds these): eval reads it again so
            "text": {k: getattr(text_cfg, k) for k in TEXT_READING}}
    model_eval = None
    if data_cfg.model_eval and run_cfg.eval.ce_contexts > 0 and _can_splice(model, target or hook):
        held, why = _heldout(text_cfg, data_cfg, model.tokenizer, run_cfg.eval.ce_contexts, None)
        if held is None:
            print(f"note: no CE evaluation: {why}; {NO_HELDOUT_FIX}")
        else:
            bos = model.tokenizer.bos_token_id
            keep = (bos,) if bos is not None else ()
            model_eval = (ModelEval(model, hook, held.tokens_NL, keep) if target is None
                          else ModelEval(model, target, held.tokens_NL, keep, input_hook=hook))
            prov["ce_eval_data"] = held.provenance()
    return TrainData(source, model_eval, prov)


def _can_splice(model, hook: str) -> bool:
    """Whether the CE evaluation can replace `hook`'s activation on this model; a note when not (the
    SAE still trains: reading the hook is right)."""
    from training.evaluate import splice_problem

    problem = splice_problem(model, hook)
    if problem is not None:
        print(f"note: no CE evaluation: {problem}")
        return False
    return True


def reader_dtype(device: str) -> dict:
    """On a GPU the reader yields rows as stored (fp16/bf16) and the trainer converts them there:
    half the bytes over PCIe and no per-batch conversion on the CPU (the same fp32 values)."""
    return {"dtype": None} if str(device).startswith("cuda") else {}


NO_HELDOUT_FIX = "give held-out text with --eval-dataset PATH or --eval-split NAME"


def _heldout(train_text, data_cfg, tokenizer, n: int, train_docs: int | None, from_cache: bool = False):
    """(the CE evaluation's held-out contexts (training.heldout), None) with notes on what was read;
    (None, why) when the training data has no split --eval-split (e.g. a single file: the split
    'train'), for the caller's one note. An --eval-dataset that cannot be read, or eval text that is
    all training text, is an error (ValueError). `from_cache`: `train_text` is the cache's, packed as
    its manifest says (the text flags do nothing then)."""
    from training.heldout import eval_text_config, heldout_contexts
    from training.packing import UnknownSeparatorError

    try:
        eval_text = eval_text_config(train_text, data_cfg.eval_dataset, data_cfg.eval_split)
        held = heldout_contexts(train_text, eval_text, tokenizer, n, train_docs=train_docs,
                                allow_overlap=data_cfg.allow_eval_overlap)
    except UnknownSeparatorError as e:
        if not from_cache:
            raise ValueError(f"CE evaluation: {e}") from None
        raise ValueError(
            f"CE evaluation: the cache {data_cfg.cache} holds pretokenized rows whose separator is not known (recorded "
            f"as 'rows'), so the text of {eval_text.dataset!r} cannot be packed as they were (--separator does nothing "
            f"with --cache): give held-out rows of this tokenizer (--eval-dataset of a pretokenized dataset, or "
            f"--eval-split NAME of {train_text.dataset}), or leave --eval-dataset out") from None
    except (ValueError, OSError) as e:
        from training.heldout import EvalOverlapError
        from training.text import MissingSplitError, TextColumnError

        if from_cache and isinstance(e, TextColumnError):  # not --text-column's to fix: the cache's column is read
            read_from = (f"the column the cache {data_cfg.cache} read its text from, {eval_text.text_column!r}"
                         if eval_text.text_column == train_text.text_column else  # the cache's is a token column
                         f"column {eval_text.text_column!r} (or SAELens's token ids; the cache {data_cfg.cache} read "
                         f"its rows from {train_text.text_column!r})")
            e = ValueError(e.problem if not data_cfg.eval_dataset else
                           f"{e.problem}. Held-out text is read from {read_from}: give an --eval-dataset with its text "
                           f"in that column, or, without --eval-dataset, --eval-split NAME: a split of "
                           f"{train_text.dataset} other than the cache's ({train_text.split!r})")
        if data_cfg.eval_dataset or isinstance(e, EvalOverlapError):
            raise ValueError(f"CE evaluation: {e}") from None
        return None, e.missing if isinstance(e, MissingSplitError) else str(e)  # without the advice for --split
    where = ", ".join(Path(f).name for f in held.files[:3]) + (" ..." if len(held.files) > 3 else "")
    print(f"CE evaluation on {held.tokens_NL.shape[0]} contexts of {eval_text.dataset!r} split {eval_text.split!r}"
          + (f" ({where})" if where else "") + f"; {held.overlap.describe()}")
    if held.overlap.in_training:
        print(f"note: {held.overlap.in_training} of the {held.overlap.eval_documents} eval documents are also "
              f"training documents (recorded in metrics.json and saesteer.json as ce_eval_data.overlap)")
    return held, None


class _Replayable:
    """An iterable that restarts a generator each time it is iterated (resume replays it)."""

    def __init__(self, make):
        self._make = make

    def __iter__(self):
        return iter(self._make())


def _eval_model(spec: str | None, man, cache_dir: str, allow_mismatch: bool):
    """The model for the CE evaluation: --model (refused if it is not the cache's model, unless
    --allow-model-mismatch), else the cache's recorded model; None (with a note) when there is no
    model to load."""
    from saes.identity import ModelIdentityError, ModelMismatchError
    from saesteer.models import load_recorded_model

    try:
        return load_recorded_model(man.recorded_model(), spec, recorded_in=f"the cache {cache_dir}", device="cpu",
                                   allow_mismatch=allow_mismatch)
    except ModelMismatchError:
        raise
    except (ModelIdentityError, OSError, ValueError, RuntimeError) as e:
        print(f"note: no CE loss recovered: {e}")
        return None
