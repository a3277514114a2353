"""A twelfth round of user paths: a researcher who labelled and scored their SAE's latents with
EleutherAI's delphi (eai-delphi 0.1.3, the field's auto-interp library) browses those labels in
saesteer and sends saesteer's back, through the CLI on a store of the toy model:

- import (`saesteer label --store S --import-delphi RUN`): delphi's run folder as its pipeline
  writes it (explanations/<module>_latent<i>.txt, scores/detection|fuzz/ of ClassifierOutput lists,
  run_config.json) becomes the latents' current labels, judge kind "delphi", with the explainer
  model and the files in the provenance; `features show` and the web page show them as delphi's;
  the scores are delphi's own figures (class-balanced accuracy, F1, AUC), computed as delphi's
  log code (delphi/log/result_analysis.py) computes them: unparsed predictions left out, not
  counted as "no";
- refusals, nothing written: a module that reads another hook, a latent the SAE does not have, a
  run of several modules with none picked, a malformed explanation or score file - each named
  with both sides or the fix, in one line;
- export (`--export-delphi DIR`): our labels as the files delphi's `--explainer none` run reads
  back, read here the way delphi reads them; imported again they are the same labels;
- metrics: ours (autointerp/interp.py `balanced_accuracy`) and delphi's agree on the same
  complete predictions, and differ where docs/autointerp.md says they do.

delphi's own code comes from its wheel, which `scripts/setup.sh --dev` downloads (not installed) into
.venv/wheels/ (or $DELPHI_WHEEL): its result_analysis.py (importable without vllm), its ClassifierOutput
and Latent classes; the run folders are written per its source, cited line by line below, with orjson
as delphi writes them. Without the wheel those tests skip, except under SAESTEER_CI=1 where they fail.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import sqlite3
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

HOOK = "blocks.2.hook_resid_post"
MODULE = "layers.2"  # the sparsify hookpoint delphi names for the residual output of block 2
D_SAE = 64

def _delphi_wheel() -> Path:
    """delphi's wheel: $DELPHI_WHEEL, else where `scripts/setup.sh --dev` downloads it (.venv/wheels/ of
    this checkout, or of the venv running the tests)."""
    if os.environ.get("DELPHI_WHEEL"):
        return Path(os.environ["DELPHI_WHEEL"])
    name = "wheels/eai_delphi-0.1.3-py3-none-any.whl"
    spots = [Path(__file__).parents[1] / ".venv" / name, Path(sys.prefix) / name]
    return next((p for p in spots if p.is_file()), spots[0])


WHEEL = _delphi_wheel()
EXPLAINER = "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"  # delphi's RunConfig default explainer_model

LABELS = {  # non-toy text: accents, CJK, code, quotes
    3: "Café and résumé: French loanwords with accents",
    7: "東京 and other Japanese place names (CJK)",
    11: 'Python `def` headers, e.g. "def main():"',
}


@dataclasses.dataclass
class ClassifierOutput:
    """delphi/scorers/classifier/sample.py, class ClassifierOutput (0.1.3): the same fields and defaults
    (checked against the wheel in test_our_replica_is_delphis_classifier_output)."""

    str_tokens: list
    activations: list
    distance: float
    activating: bool
    prediction: bool | None = False
    probability: float | None = 0.0
    correct: bool | None = False


def _latent_name(module: str, latent: int) -> str:
    # delphi/latents/latents.py, Latent.__repr__: f"{self.module_name}_latent{self.latent_index}"
    return f"{module}_latent{latent}"


def _orjson_dumps(obj) -> bytes:
    """orjson.dumps, as delphi writes its files (dataclasses as objects); orjson is a dev requirement
    (scripts/interop-libraries.txt)."""
    orjson = _needed("orjson", "scripts/setup.sh --dev installs it (scripts/interop-libraries.txt)")
    return orjson.dumps(obj)


def _needed(module: str, how: str):
    """Import a module the tests need from the dev setup: skip without it, fail under SAESTEER_CI=1."""
    try:
        return __import__(module)
    except ImportError:
        _missing(f"{module} is not installed; {how}")


def _missing(reason: str):
    if os.environ.get("SAESTEER_CI") == "1":
        pytest.fail(f"delphi tests cannot run under SAESTEER_CI=1: {reason}", pytrace=False)
    pytest.skip(reason)


def _samples(latent: int) -> dict[str, list[ClassifierOutput]]:
    """Detection and fuzz outputs as delphi's Classifier._generate leaves them (classifier.py lines
    118-125): prediction None and correct None where the answer did not parse, probability None
    without log-probs. Fuzz negatives are non-activating contexts with random marks (fuzz.py _prepare)."""
    g = torch.Generator().manual_seed(latent)
    out = {}
    for scorer in ("detection", "fuzz"):
        items = []
        for k in range(12):
            activating = k % 3 != 0
            r = float(torch.rand((), generator=g))
            prediction = None if k in (4, 9) else (r < (0.75 if activating else 0.3))
            prob = None if scorer == "fuzz" else round(r if not activating else 1 - r / 2, 4)
            items.append(ClassifierOutput(
                str_tokens=[" the", " café", " 東京"], activations=[0.0, 1.5 if activating else 0.0, 0.0],
                distance=0.5 if activating else -1, activating=activating, prediction=prediction, probability=prob,
                correct=None if prediction is None else prediction == activating))
        out[scorer] = items
    return out


def write_delphi_run(run: Path, labels: dict[int, str], module: str = MODULE, scores: bool = True,
                     model: str = "toyworld-tiny", **config) -> Path:
    """A run folder as delphi/__main__.py writes it (0.1.3): run_config.json (RunConfig.save_json,
    line 394), explanations/<latent>.txt = orjson.dumps(explanation) (explainer_postprocess, lines
    176-178), scores/<scorer>/<latent with '/' -> '--'>.txt = orjson.dumps(result.score) (scorer_postprocess,
    lines 233-237), and a simulation scorer folder (its files are not classifier outputs)."""
    (run / "explanations").mkdir(parents=True, exist_ok=True)
    (run / "run_config.json").write_text(json.dumps({"explainer_model": EXPLAINER, "explainer": "default",
                                                     "explainer_provider": "offline", "hookpoints": [module],
                                                     "model": model,
                                                     "scorers": ["detection", "fuzz", "simulation"], **config},
                                                    indent=4))
    for i, text in labels.items():
        (run / "explanations" / f"{_latent_name(module, i)}.txt").write_bytes(_orjson_dumps(text))
        if not scores:
            continue
        for scorer, items in _samples(i).items():
            d = run / "scores" / scorer
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{_latent_name(module, i).replace('/', '--')}.txt").write_bytes(_orjson_dumps(items))
        (run / "scores" / "simulation").mkdir(parents=True, exist_ok=True)
        (run / "scores" / "simulation" / f"{_latent_name(module, i)}.txt").write_bytes(b'{"ev_correlation_score": 0.4}')
    return run


# ---------------------------------------------------------------------------------------------
# delphi's own code, from its wheel (no vllm needed for these parts)


@pytest.fixture(scope="module")
def delphi_src(tmp_path_factory):
    if not WHEEL.is_file():
        _missing(f"delphi's wheel is not at {WHEEL}; run scripts/setup.sh --dev (or set DELPHI_WHEEL)")
    d = tmp_path_factory.mktemp("delphi_wheel")
    zipfile.ZipFile(WHEEL).extractall(d)
    return d


@pytest.fixture(scope="module")
def result_analysis(delphi_src):
    """delphi/log/result_analysis.py itself (it imports orjson, pandas, sklearn and plotly)."""
    for module in ("orjson", "pandas", "sklearn", "plotly"):
        _needed(module, "scripts/setup.sh --dev installs it")
    sys.path.insert(0, str(delphi_src))
    try:
        import delphi.log.result_analysis as ra
        yield ra
    finally:
        sys.path.remove(str(delphi_src))
        for name in [m for m in sys.modules if m == "delphi" or m.startswith("delphi.")]:
            sys.modules.pop(name, None)


def _delphi_class(delphi_src: Path, relpath: str, name: str) -> ast.ClassDef:
    tree = ast.parse((delphi_src / relpath).read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def _delphis_latent_name(delphi_src: Path):
    """delphi's own Latent.__repr__ (delphi/latents/latents.py), from its source: (module, i) -> file stem."""
    ns = {"dataclass": dataclasses.dataclass}
    exec(compile(ast.Module([_delphi_class(delphi_src, "delphi/latents/latents.py", "Latent")], []), "latents.py",
                 "exec"), ns)
    return lambda module, i: str(dataclasses.dataclass(ns["Latent"])(module, i))


# ---------------------------------------------------------------------------------------------
# the store


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy-model feature store labelled by our offline labeller, through the CLI."""
    import saes

    d = tmp_path_factory.mktemp("delphi")
    saesteer("cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "4096", "--shard-contexts", "8",
             "--hooks", HOOK, "--out", d / "cache", "--no-progress").ok()
    sae = saes.create_sae("topk", 128, D_SAE, k=8, generator=torch.Generator().manual_seed(0),
                          metadata={"hook_name": HOOK, "model_name": "toyworld-tiny"})
    saes.save_sae(sae, d / "sae")
    saesteer("features", "build", "--sae", d / "sae", "--cache", d / "cache", "--out", d / "ours.db",
             "--no-progress", "--top-k", "5", "--n-quantile", "6").ok()
    saesteer("label", "--store", d / "ours.db", "--no-progress", "--embed-backend", "none").ok()
    return d


def _fresh_store(toy, tmp_path) -> Path:
    import shutil

    p = tmp_path / "f.db"
    shutil.copy(toy / "ours.db", p)
    return p


def _label_rows(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM labels").fetchone()[0]


# ---------------------------------------------------------------------------------------------
# 1. import: delphi's labels shown as delphi's, its figures as its log computes them


def test_import_shows_delphi_labels_and_delphis_own_figures(toy, tmp_path):
    from autointerp.delphi_io import delphi_metrics
    from features import FeatureStore

    db = _fresh_store(toy, tmp_path)
    run = write_delphi_run(tmp_path / "results" / "run1", LABELS)
    r = saesteer("label", "--store", db, "--import-delphi", run).ok()
    assert f"imported 3 delphi labels of module {MODULE} (hook {HOOK})" in r.out and EXPLAINER in r.out
    assert "3 latents had a saesteer label" in r.out  # ours were replaced as current, kept as history
    assert "not imported: scores/simulation" in r.out and "note:" not in r.out  # the same model

    show = saesteer("features", "show", db, "7").ok().out
    assert LABELS[7] in show and f"label by {EXPLAINER} (delphi)" in show
    with FeatureStore.open(db) as st:
        rec = st.feature(7)
        assert rec.label.provenance.judge_kind == "delphi"
        src = rec.label.provenance.extra["delphi"]
        assert src["explanation_file"].endswith(f"explanations/{MODULE}_latent7.txt")
        assert src["score_files"]["fuzz"].endswith(f"scores/fuzz/{MODULE}_latent7.txt")
        got = {s.method: s.value for s in rec.scores}
    # the figures are delphi's: with two unparsed predictions left out (counting them as "no"
    # would give other numbers), fuzz has no AUC (no probabilities)
    det = [dataclasses.asdict(o) for o in _samples(7)["detection"]]
    valid = [s for s in det if s["prediction"] is not None]
    tp = sum(s["activating"] and s["prediction"] for s in valid)
    tn = sum(not s["activating"] and not s["prediction"] for s in valid)
    pos = sum(s["activating"] for s in valid)
    assert got["delphi_detection"] == pytest.approx((tp / pos + tn / (len(valid) - pos)) / 2)
    assert got["delphi_detection"] == pytest.approx(delphi_metrics(det)["balanced_accuracy"])
    assert "delphi_fuzz" in got and "delphi_fuzz_f1" in got and "delphi_fuzz_auc" not in got
    assert f"delphi_detection {got['delphi_detection']:.3f}" in show

    # a second import of the same run writes nothing new
    before = _label_rows(db)
    r = saesteer("label", "--store", db, "--import-delphi", run).ok()
    assert "imported 0 delphi labels" in r.out and "3 already imported, unchanged" in r.out
    assert _label_rows(db) == before

    # full-text search finds delphi's words
    assert "résumé" in saesteer("features", "search", db, "résumé").ok().out
    # our labeller, run again, makes its own labels current again (delphi's stay in the history)
    saesteer("label", "--store", db, "--no-progress", "--embed-backend", "none").ok()
    assert "(offline" in saesteer("features", "show", db, "7").ok().out


def test_figures_equal_delphis_result_analysis(toy, tmp_path, result_analysis):
    """Per latent and pooled, the imported figures equal delphi's own compute_confusion /
    compute_classification_metrics / compute_auc / get_agg_metrics over its load_data."""
    from features import FeatureStore

    ra = result_analysis
    db = _fresh_store(toy, tmp_path)
    run = write_delphi_run(tmp_path / "results" / "run2", LABELS)
    out = saesteer("label", "--store", db, "--import-delphi", run).ok().out
    import shutil

    shutil.rmtree(run / "scores" / "simulation")  # load_data reads every scorer folder as classifier outputs
    df, _ = ra.load_data(run / "scores", [MODULE])
    with FeatureStore.open(db) as st:
        for (scorer, latent), grp in df[df.score_type.isin(["detection", "fuzz"])].groupby(["score_type", "latent_idx"]):
            m = ra.compute_classification_metrics(ra.compute_confusion(grp))
            auc = ra.compute_auc(grp)
            got = {s.method: s.value for s in st.feature(int(latent)).scores}
            assert got[f"delphi_{scorer}"] == pytest.approx(m["accuracy"])  # delphi's "accuracy" is balanced
            assert got[f"delphi_{scorer}_f1"] == pytest.approx(m["f1_score"])
            assert got.get(f"delphi_{scorer}_auc") == (None if auc is None else pytest.approx(auc))
    agg = ra.get_agg_metrics(df[df.score_type.isin(["detection", "fuzz"])], None).set_index("score_type")
    for scorer in ("detection", "fuzz"):
        a = agg.loc[scorer]
        auc = "-" if a["auc"] is None or a["auc"] != a["auc"] else f"{a['auc']:.3f}"
        assert (f"delphi {scorer}, all latents pooled as delphi's log prints it: class-balanced accuracy "
                f"{a['accuracy']:.3f}, F1 {a['f1_score']:.3f}, precision {a['precision']:.3f}, recall "
                f"{a['recall']:.3f}, AUC {auc}") in out


def test_the_web_page_shows_the_delphi_label_as_delphis(toy, tmp_path):
    from features import FeatureStore
    from helpers.web_app import client
    from saesteer.web import Limits, ServeConfig, StoreEntry, create_app
    from saesteer.web.store_source import StoreCatalog

    db = _fresh_store(toy, tmp_path)
    saesteer("label", "--store", db, "--import-delphi", write_delphi_run(tmp_path / "run", LABELS)).ok()
    app = create_app([StoreEntry("toy", StoreCatalog(FeatureStore.open(db), name="toy"))],
                     config=ServeConfig(port=8000), limits=Limits())
    page = client(app).get("/s/toy/f/11")
    assert page.status_code == 200
    html = page.text
    import html as html_lib

    assert html_lib.escape(LABELS[11]) in html.replace("&#34;", "&quot;")  # escaped, whole
    assert f"by {EXPLAINER} (delphi)" in html and "delphi_detection" in html


def test_a_run_whose_model_may_be_another_is_imported_with_a_note_naming_both(toy, tmp_path):
    db = _fresh_store(toy, tmp_path)
    run = write_delphi_run(tmp_path / "run", LABELS, model="/data/checkpoints/pythia-70m")
    r = saesteer("label", "--store", db, "--import-delphi", run).ok()
    assert "note: the delphi run explained /data/checkpoints/pythia-70m (run_config.json); the SAE of this " \
           "store is of toyworld-tiny" in r.out


def test_delphis_labels_say_where_they_came_from_and_are_not_published_as_ours(toy, tmp_path):
    """As Neuronpedia's (test_user_paths13): `features show` and the web name the run, and a
    Neuronpedia upload of the store leaves them out (it sent them as saesteer's own explanations)."""
    import gzip

    from features import FeatureStore
    from helpers.web_app import client
    from saesteer.web import Limits, ServeConfig, StoreEntry, create_app
    from saesteer.web.store_source import StoreCatalog

    db = _fresh_store(toy, tmp_path)
    saesteer("label", "--store", db, "--import-delphi", write_delphi_run(tmp_path / "results" / "run9", LABELS)).ok()
    assert f"imported from delphi run run9, module {MODULE}" in saesteer("features", "show", db, "7").ok().out
    app = create_app([StoreEntry("toy", StoreCatalog(FeatureStore.open(db), name="toy"))],
                     config=ServeConfig(port=8000), limits=Limits())
    with client(app) as c:
        assert f"imported from delphi run run9, module {MODULE}" in c.get("/s/toy/f/7").text

    saesteer("features", "export", db, tmp_path / "np", "--format", "neuronpedia", "--model-id", "toyworld-tiny",
             "--source-set", "res-toy").ok()
    rows = [json.loads(line) for f in (tmp_path / "np").rglob("explanations/*.jsonl.gz")
            for line in gzip.open(f, "rt", encoding="utf-8")]
    assert rows and all(r["explanationModelName"].startswith("saesteer:offline") for r in rows)  # ours are sent
    assert not {int(r["index"]) for r in rows} & set(LABELS)


def test_hidden_files_in_a_run_folder_are_not_read_as_delphi_files(toy, tmp_path):
    """A run folder copied on a Mac (or synced) holds .DS_Store beside delphi's files: it is no
    delphi output and is left out (it refused the import as 'not a delphi file name')."""
    db = _fresh_store(toy, tmp_path)
    run = write_delphi_run(tmp_path / "run", LABELS)
    for d in (run / "explanations", run / "scores" / "detection"):
        (d / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    r = saesteer("label", "--store", db, "--import-delphi", run).ok()
    assert f"imported {len(LABELS)} delphi labels" in r.out


# ---------------------------------------------------------------------------------------------
# 2. refusals: named, one line, nothing written


@pytest.mark.parametrize("case", ["other_layer", "latent_out_of_range", "two_modules", "not_a_string",
                                  "score_without_prediction", "bad_name", "other_model"])
def test_refusals_name_both_sides_and_write_nothing(toy, tmp_path, case):
    db = _fresh_store(toy, tmp_path)
    run = tmp_path / "run"
    if case == "other_layer":
        write_delphi_run(run, LABELS, module="layers.3")
        want = ["delphi module 'layers.3' reads blocks.3.hook_resid_post", f"reads {HOOK}"]
    elif case == "latent_out_of_range":
        write_delphi_run(run, {**LABELS, 64: "beyond the SAE"})
        want = [f"{MODULE}_latent64.txt: latent 64 is not a latent of the SAE", "d_sae=64, latents 0..63"]
    elif case == "two_modules":
        write_delphi_run(run, LABELS)
        # layers.20 shares layers.2's prefix: delphi's own load_data (glob f"*{module}*") would mix them in
        write_delphi_run(run, {1: "a layer-20 label", 3: "another layer-20 label"}, module="layers.20")
        want = ["2 modules (layers.2, layers.20)", f"hook {HOOK}", "--delphi-module", "'layers.2' reads it"]
    elif case == "not_a_string":
        write_delphi_run(run, LABELS)
        (run / "explanations" / f"{MODULE}_latent7.txt").write_bytes(b'{"explanation": "x"}')
        want = [f"{MODULE}_latent7.txt: holds dict", "one JSON string"]
    elif case == "score_without_prediction":
        write_delphi_run(run, LABELS)
        p = run / "scores" / "fuzz" / f"{MODULE}_latent3.txt"
        p.write_bytes(json.dumps([{"activating": True, "probability": None}]).encode())
        want = [f"{MODULE}_latent3.txt: sample 0 lacks prediction", "re-run that scorer or remove the file"]
    elif case == "other_model":  # the same layer and width, another model
        write_delphi_run(run, LABELS, model="EleutherAI/pythia-160m")
        with sqlite3.connect(db) as con:  # the store as it reads for a hub model
            con.execute("UPDATE meta SET value = json_set(value, '$.name', 'EleutherAI/pythia-70m') "
                        "WHERE key = 'model_identity'")
        want = ["the delphi run explained EleutherAI/pythia-160m", "is of EleutherAI/pythia-70m"]
    else:
        write_delphi_run(run, LABELS)
        (run / "explanations" / "notes.txt").write_text("my notes")
        want = ["notes.txt: not a delphi file name", "<module>_latent<index>.txt"]
    before = _label_rows(db)
    r = saesteer("label", "--store", db, "--import-delphi", run).no_traceback()
    assert r.rc == 2, r.text
    assert len(r.err.strip().splitlines()) == 1 and r.err.startswith("error: ")
    for w in want:
        assert w in r.err, (w, r.err)
    assert _label_rows(db) == before
    if case == "two_modules":  # picking the module of this SAE imports it
        r = saesteer("label", "--store", db, "--import-delphi", run, "--delphi-module", MODULE).ok()
        assert "imported 3 delphi labels" in r.out
        from features import FeatureStore

        with FeatureStore.open(db) as st:
            assert st.label(3).text == LABELS[3] and st.label(1).provenance.judge_kind != "delphi"


# ---------------------------------------------------------------------------------------------
# 3. export: our labels read back by delphi's reading code, and imported again unchanged


def test_export_is_read_by_delphi_and_round_trips(toy, tmp_path, request):
    from features import FeatureStore

    db = _fresh_store(toy, tmp_path)
    run = tmp_path / "results" / "ours"
    r = saesteer("label", "--store", db, "--export-delphi", run).ok()
    with FeatureStore.open(db) as st:
        ours = {i: st.label(i).text for i in range(D_SAE) if st.label(i) is not None}
    assert ours and f"wrote {len(ours)} delphi explanation files of module {MODULE}" in r.out

    latent_name = _delphis_latent_name(request.getfixturevalue("delphi_src"))
    for i, text in ours.items():
        # delphi/__main__.py none_postprocessor (lines 200-213): explanations_path / f"{result.record.latent}.txt",
        # read with orjson.loads(f.read()); json.loads reads the same bytes
        path = run / "explanations" / f"{latent_name(MODULE, i)}.txt"
        assert json.loads(path.read_bytes()) == text

    # into another store of the same SAE: the same labels, now marked as delphi's
    other = tmp_path / "other.db"
    import shutil

    shutil.copy(toy / "ours.db", other)
    saesteer("label", "--store", other, "--import-delphi", run).ok()
    with FeatureStore.open(other) as st:
        back = {i: st.label(i) for i in ours}
    assert {i: lab.text for i, lab in back.items()} == ours
    assert {lab.provenance.judge_kind for lab in back.values()} == {"delphi"}

    # a latent whose current label is delphi's since (imported from another run) is not exported again:
    # the file the last export wrote for it goes (delphi would score it as our label); a file no export
    # wrote stays (delphi's own explanation of a latent)
    gone = max(ours)
    write_delphi_run(tmp_path / "results" / "theirs", {gone: "delphi's label of it"}, scores=False)
    saesteer("label", "--store", db, "--import-delphi", tmp_path / "results" / "theirs").ok()
    theirs = run / "explanations" / f"{MODULE}_latent{D_SAE + 1}.txt"
    theirs.write_bytes(b'"delphi\'s own"')
    r = saesteer("label", "--store", db, "--export-delphi", run).ok()
    left = {p.name for p in (run / "explanations").iterdir()}
    assert f"{MODULE}_latent{gone}.txt" not in left and f"{MODULE}_latent{min(ours)}.txt" in left and theirs.name in left
    assert "removed 1 explanation file an earlier export wrote there" in r.out and f"wrote {len(ours) - 1} " in r.out
    theirs.unlink()

    # a second export into a folder whose files hold other labels is refused, not overwritten
    victim = run / "explanations" / f"{MODULE}_latent{min(ours)}.txt"
    victim.write_bytes(b'"delphi\'s own label"')
    r = saesteer("label", "--store", db, "--export-delphi", run).no_traceback()
    assert r.rc == 2 and "hold other labels" in r.err and "--overwrite true" in r.err
    assert victim.read_bytes() == b'"delphi\'s own label"'
    # a module that does not read the store's hook is refused
    r = saesteer("label", "--store", db, "--export-delphi", tmp_path / "x", "--delphi-module", "layers.0.mlp")
    assert r.rc == 2 and "'layers.0.mlp' reads blocks.0.hook_mlp_out" in r.err and HOOK in r.err
    # its advice is the export's: the name to give, not a run to import
    assert f"name this SAE's hookpoint with --delphi-module (e.g. {MODULE}), or leave it out" in r.err, r.err
    assert "import" not in r.err


# ---------------------------------------------------------------------------------------------
# 4. metric definitions: ours and delphi's on the same predictions


def test_our_balanced_accuracy_and_delphis_agree_on_complete_predictions_and_differ_where_documented():
    from autointerp.delphi_io import delphi_metrics
    from autointerp.interp import balanced_accuracy

    truth = [True, True, True, False, False, False, False, True]
    pred = [True, False, True, False, True, False, False, True]
    samples = [{"activating": t, "prediction": p, "probability": None} for t, p in zip(truth, pred)]
    assert balanced_accuracy("detection", truth, pred).balanced_accuracy == pytest.approx(
        delphi_metrics(samples)["balanced_accuracy"])
    # an unparsed prediction: delphi leaves the sample out; ours never has one (a judge answer that
    # does not parse is asked again, then the latent fails and gets no score)
    samples[1]["prediction"] = None
    assert delphi_metrics(samples)["balanced_accuracy"] == pytest.approx(
        balanced_accuracy("d", truth[:1] + truth[2:], pred[:1] + pred[2:]).balanced_accuracy)
    assert delphi_metrics(samples)["failed"] == 1
    # one class only: delphi counts the missing class as 0 (at most 0.5); ours has no score
    only_pos = [{"activating": True, "prediction": True, "probability": None}] * 3
    assert delphi_metrics(only_pos)["balanced_accuracy"] == 0.5
    assert balanced_accuracy("d", [True] * 3, [True] * 3).balanced_accuracy is None
    doc = (Path(__file__).parents[1] / "docs" / "autointerp.md").read_text()
    assert "delphi" in doc and "fuzz_type" in doc and "left out" in doc


def test_our_replica_is_delphis_classifier_output(delphi_src):
    """The ClassifierOutput written above has delphi's fields, in order, with its defaults."""
    cls = _delphi_class(delphi_src, "delphi/scorers/classifier/sample.py", "ClassifierOutput")
    theirs = [(n.target.id, ast.unparse(n.value) if n.value else None) for n in cls.body if isinstance(n, ast.AnnAssign)]
    ours = [(f.name, None if f.default is dataclasses.MISSING else repr(f.default)) for f in dataclasses.fields(ClassifierOutput)]
    assert theirs == ours


def test_delphi_tests_fail_without_the_wheel_under_ci():
    """SAESTEER_CI=1 turns a missing delphi wheel into a failure, so CI cannot silently skip the tests
    that run delphi's code (without it they skip)."""
    import subprocess

    root = Path(__file__).parents[1]
    env = {**os.environ, "DELPHI_WHEEL": "/nonexistent/eai_delphi-0.1.3-py3-none-any.whl", "SAESTEER_CI": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE",
                        f"{Path(__file__).relative_to(root)}::test_our_replica_is_delphis_classifier_output"],
                       cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 1, r.stdout
    assert "delphi tests cannot run under SAESTEER_CI=1: delphi's wheel is not at /nonexistent" in r.stdout
    assert "scripts/setup.sh --dev" in r.stdout


# ---------------------------------------------------------------------------------------------
# 5. review fixes: delphi's module names of other model families, flags that do nothing here,
#    the run's settings kept, names from the run's files printed with their controls drawn


def _with_hook(db: Path, hook: str) -> Path:
    """The store as it reads for an SAE on another hook (same width and latents)."""
    with sqlite3.connect(db) as con:
        con.execute("UPDATE meta SET value = json_set(value, '$.hook_name', ?) WHERE key = 'sae'", (hook,))
    return db


@pytest.mark.parametrize("hook, module, named, want", [
    # delphi names a layer after the base model's list: GPT-NeoX, GPT-2, or with a wrapper's prefix
    (HOOK, "gpt_neox.layers.2", False, "imported 3"),
    (HOOK, "transformer.h.2", False, "imported 3"),
    # block 3's residual input is block 2's output: delphi's layers.2, not layers.3
    ("blocks.3.hook_resid_pre", "layers.2", False, "imported 3"),
    ("blocks.3.hook_resid_pre", "layers.3", False,
     "error: delphi module 'layers.3' reads blocks.3.hook_resid_post (its output), but the SAE of"),
    ("blocks.3.hook_resid_pre", "layers.3", True, "note: delphi module 'layers.3' taken as a transcoder"),
    # attention's output (saes.formats.base's one map)
    ("blocks.2.hook_attn_out", "layers.2.self_attn", False, "imported 3"),
    # a module saesteer has no hook for: refused, unless the user names it
    ("blocks.2.hook_attn_out", "layers.2.self_attn.o_proj", False,
     "name it with --delphi-module layers.2.self_attn.o_proj"),
    ("blocks.2.hook_attn_out", "layers.2.self_attn.o_proj", True, "note: saesteer cannot tell which hook delphi module"),
])
def test_delphi_module_names_of_other_models_and_the_layer_input(toy, tmp_path, hook, module, named, want):
    db = _with_hook(_fresh_store(toy, tmp_path), hook)
    run = write_delphi_run(tmp_path / "run", LABELS, module=module)
    r = saesteer("label", "--store", db, "--import-delphi", run, *(["--delphi-module", module] if named else []))
    assert want in (r.out if r.rc == 0 else r.err), r.text
    if r.rc != 0:
        assert r.rc == 2 and len(r.err.strip().splitlines()) == 1 and hook in r.err
        assert "layers.2 fits it" in r.err or module != "layers.3"


def test_export_of_a_resid_pre_store_names_the_previous_layer_and_says_how_gpt2_names_it(toy, tmp_path):
    db = _with_hook(_fresh_store(toy, tmp_path), "blocks.3.hook_resid_pre")
    out = saesteer("label", "--store", db, "--export-delphi", tmp_path / "x").ok().out
    assert "of module layers.2 " in out and "delphi's hookpoint is h.2: export with --delphi-module" in out
    assert any(p.name.startswith("layers.2_latent") for p in (tmp_path / "x" / "explanations").iterdir())


@pytest.mark.parametrize("flags, want", [
    (["--import-delphi", "RUN", "--dry-run"], "--dry-run: flag(s) of a labelling run"),
    (["--export-delphi", "RUN", "--report", "r.json"], "--report: flag(s) of a labelling run"),
    (["--delphi-module", MODULE], "--delphi-module names the module of --import-delphi RUN or --export-delphi DIR"),
    # the Neuronpedia import is the same kind of run: one per run, no labelling flags
    (["--import-delphi", "RUN", "--import-neuronpedia", "RUN"], "--import-delphi and --import-neuronpedia: give one"),
    (["--import-neuronpedia", "RUN", "--dry-run"], "--dry-run: flag(s) of a labelling run; --import-neuronpedia"),
    (["--neuronpedia-sae", "gpt2-small/6-res-jb"], "--neuronpedia-sae names the SAE of --import-neuronpedia"),
    # a companion flag without its run is the mistake named, whatever else is given; one given to the other
    # kind of run is said to be read by none (not "give --import-neuronpedia too", then refused as two runs)
    (["--delphi-module", MODULE, "--dry-run"], "--delphi-module names the module of --import-delphi RUN"),
    (["--neuronpedia-sae", "gpt2-small/6-res-jb", "--latents", "0-9"], "--neuronpedia-sae names the SAE of"),
    (["--import-delphi", "RUN", "--neuronpedia-sae", "gpt2-small/6-res-jb"], "--import-delphi reads none, so leave"),
    (["--export-delphi", "RUN", "--neuronpedia-sae", "gpt2-small/6-res-jb"], "--export-delphi reads none, so leave"),
    # a judge's, the labelling settings' and the embeddings' flags too (they were left unheeded)
    (["--import-neuronpedia", "RUN", "--judge-model", "gpt-4o", "--latents", "0-9", "--embed-model", "m"],
     "--latents and --judge-model and --embed-model: flag(s) of a labelling run; --import-neuronpedia"),
])
def test_flags_that_would_do_nothing_with_delphi_are_refused(toy, tmp_path, flags, want):
    db = _fresh_store(toy, tmp_path)
    run = write_delphi_run(tmp_path / "run", LABELS)
    before = _label_rows(db)
    r = saesteer("label", "--store", db, *[str(run) if f == "RUN" else f for f in flags]).no_traceback()
    assert r.rc == 2 and want in r.err, r.text
    assert _label_rows(db) == before and not (tmp_path / "r.json").exists()


def test_the_runs_settings_are_kept_and_its_names_printed_with_controls_drawn(toy, tmp_path):
    from features import FeatureStore

    db = _fresh_store(toy, tmp_path)
    run = write_delphi_run(tmp_path / "run", LABELS, fuzz_type="active", log_probs=True,
                           constructor_cfg={"non_activating_source": "FAISS", "n_non_activating": 50})
    cfg = json.loads((run / "run_config.json").read_text())
    cfg["explainer_model"] = "my-model\x1b[2J\u202eevil"
    (run / "run_config.json").write_text(json.dumps(cfg))
    out = saesteer("label", "--store", db, "--import-delphi", run).ok().out
    assert "\x1b" not in out and "\u202e" not in out and "my-model" in out
    with FeatureStore.open(db) as st:
        params = st.label(3).provenance.params
    assert params["fuzz_type"] == "active" and params["log_probs"] is True
    assert params["non_activating_source"] == "FAISS"  # harder negatives: docs/autointerp.md
