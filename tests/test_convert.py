"""`saesteer convert SAE --to LIBRARY --out DIR`: an SAE handed to colleagues who use another library, loaded
there by that library's own loader (SAELens `SAE.load_from_disk`, sparsify `SparseCoder.load_from_disk` /
`load_many`, dictionary_learning `load_dictionary` and its classes' `from_pretrained`) with our latents,
reconstruction and forward, on a real tiny GPT-2's activations (code, accented prose, CJK), for TopK,
BatchTopK, Matryoshka, JumpReLU and ReLU; SAEs those libraries made converted on; what a target cannot hold
refused in one line naming both sides; DIR written whole or not at all.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("sparsify")
pytest.importorskip("dictionary_learning")
pytest.importorskip("sae_lens")
from dictionary_learning.trainers.batch_top_k import BatchTopKSAE  # noqa: E402
from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE  # noqa: E402
from dictionary_learning.utils import load_dictionary  # noqa: E402
from helpers.real_cli import saesteer  # noqa: E402
from sae_lens import SAE as SaeLensSAE  # noqa: E402
from sparsify import SparseCoder  # noqa: E402

import saes  # noqa: E402
from saes.formats import dictionary_learning, resolve_sae  # noqa: E402
from saes.formats.sparsify import hookpoint_folders  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

HOOK = "blocks.1.hook_resid_post"
TOL = {"rtol": 1e-5, "atol": 2e-5}
# (architecture, thresholds): "one" = every latent the same threshold (SAELens's BatchTopK, dictionary_learning's),
# "own" = a threshold per latent (as saesteer's frequency matching learns them)
SOURCES = {"topk": ("topk", None), "batchtopk": ("batchtopk", "one"), "batchtopk_own": ("batchtopk", "own"),
           "matryoshka": ("matryoshka_batchtopk", "one"), "matryoshka_own": ("matryoshka_batchtopk", "own"),
           "jumprelu": ("jumprelu", "own"), "relu": ("standard", None)}


@pytest.fixture(scope="module")
def real_acts(real_models):
    from helpers.publish_acts import activations_on_texts

    path = real_models.path("gpt2")
    return str(path), activations_on_texts(path, [HOOK])[HOOK]


def source_folder(name: str, model: str, x_ND: torch.Tensor, tmp_path, hook: str = HOOK):
    """(the SAE, its saesteer folder) for SOURCES[name], firing on ~4% of the real rows."""
    arch, thresholds = SOURCES[name]
    kw = {"k": 8} if "topk" in arch else {}
    if arch == "matryoshka_batchtopk":
        kw["matryoshka_widths"] = [32, 128]
    g = torch.Generator().manual_seed(7)
    sae = saes.create_sae(arch, x_ND.shape[1], 128, generator=g, metadata={"hook_name": hook, "model_name": model}, **kw)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3, generator=g)  # a centring that matters
        pre_NF = (x_ND - sae.b_dec) @ sae.W_enc + sae.b_enc
        if thresholds == "one":
            sae.threshold.fill_(pre_NF.quantile(0.96).item())
        elif thresholds == "own":
            sae.threshold.copy_(pre_NF.quantile(0.96, dim=0) + 1e-3)
        elif arch == "standard":
            sae.b_enc.sub_(pre_NF.quantile(0.96, dim=0))
            sae.normalize_decoder_()
    return sae, saes.save_sae(sae, tmp_path / f"src_{name}")



def layer0_source(model: str, x_ND: torch.Tensor, tmp_path):
    """(a TopK SAE on blocks.0.hook_resid_post, its saesteer folder): another layer's, for a run of several."""
    sae = saes.create_sae("topk", x_ND.shape[1], 128, k=8, generator=torch.Generator().manual_seed(1),
                          metadata={"hook_name": "blocks.0.hook_resid_post", "model_name": model})
    return sae, saes.save_sae(sae, tmp_path / "src0")

def convert(src, target: str, out, *more):
    return saesteer("convert", src, "--to", target, "--out", out, *more)


def check_same(ours: saes.SAE, encode, decode, forward, x: torch.Tensor) -> None:
    latents = ours.encode(x)
    assert (latents > 0).sum().item() > x.shape[0], "the SAE hardly fires: nothing compared"
    torch.testing.assert_close(encode(x), latents, **TOL)
    torch.testing.assert_close(decode(latents), ours.decode(latents), **TOL)
    torch.testing.assert_close(forward(x), ours(x).recon, **TOL)


def no_leftovers(parent) -> None:
    """Nothing half-written beside the output: no temporary or moved-aside folder."""
    assert [p.name for p in parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("name", list(SOURCES))
@pytest.mark.parametrize("target", ["saelens", "saesteer"])
def test_saelens_loads_the_converted_sae_with_our_outputs(real_acts, tmp_path, name, target):
    model, x = real_acts
    sae, src = source_folder(name, model, x, tmp_path)
    r = convert(src, target, tmp_path / "out").ok()
    assert "SAE.load_from_disk" in r.out, r.text
    sl = SaeLensSAE.load_from_disk(str(tmp_path / "out"))
    check_same(sae, sl.encode, sl.decode, sl, x)
    assert sl.cfg.metadata.hook_name == HOOK and sl.cfg.metadata.model_name == model
    assert (tmp_path / "out" / "saesteer.json").is_file() == (target == "saesteer")
    back = resolve_sae(tmp_path / "out").sae
    assert back.architecture == sae.architecture
    torch.testing.assert_close(back.encode(x), sae.encode(x), **TOL)


@pytest.mark.parametrize("name, dict_class", [
    ("topk", "AutoEncoderTopK"), ("batchtopk", "BatchTopKSAE"), ("matryoshka", "MatryoshkaBatchTopKSAE"),
    ("batchtopk_own", "JumpReluAutoEncoder"), ("matryoshka_own", "JumpReluAutoEncoder"),
    ("jumprelu", "JumpReluAutoEncoder"), ("relu", "AutoEncoder")])
def test_dictionary_learning_loads_the_converted_sae_as_its_own_class_with_our_outputs(real_acts, tmp_path, name,
                                                                                      dict_class):
    model, x = real_acts
    sae, src = source_folder(name, model, x, tmp_path)
    r = convert(src, "dictionary_learning", tmp_path / "dl").ok()
    assert f"dictionary_learning {dict_class}" in r.out, r.text
    ae, config = load_dictionary(str(tmp_path / "dl"), "cpu")
    assert type(ae).__name__ == dict_class == config["trainer"]["dict_class"]
    check_same(sae, ae.encode, ae.decode, ae, x)
    if dict_class in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE"):  # the class a user picks, loaded by itself
        cls = BatchTopKSAE if dict_class == "BatchTopKSAE" else MatryoshkaBatchTopKSAE
        own = cls.from_pretrained(str(tmp_path / "dl" / "ae.pt"), k=8)
        check_same(sae, own.encode, own.decode, own, x)
    if name == "relu":  # a ReLU SAE whose decoder rows are not unit-norm: JumpReluAutoEncoder, and why
        scaled = copy.deepcopy(sae)
        with torch.no_grad():
            scaled.W_dec.mul_(2.0)
        r2 = convert(saes.save_sae(scaled, tmp_path / "scaled"), "dictionary_learning", tmp_path / "dl2").ok()
        assert "JumpReluAutoEncoder of threshold 0" in r2.out and "not unit-norm" in r2.out, r2.out
        ae2, _ = load_dictionary(str(tmp_path / "dl2"), "cpu")
        check_same(scaled, ae2.encode, ae2.decode, ae2, x)
    if "own" in name:  # the why is said
        assert "thresholds of their own" in r.out and ("prefixes [32, 128]" in r.out) == (name == "matryoshka_own"), r.out

    back = resolve_sae(tmp_path / "dl").sae  # and back into saesteer: the same kind of SAE
    torch.testing.assert_close(back.encode(x), sae.encode(x), **TOL)
    if dict_class != "JumpReluAutoEncoder":
        assert back.architecture == sae.architecture
    if dict_class == "MatryoshkaBatchTopKSAE":
        assert back.levels == [32, 128]


def test_sparsify_loads_a_converted_topk_sae_with_our_outputs(real_acts, tmp_path):
    """On GPT-2 the hookpoint is `h.1`, the module sparsify's trainer hooks in GPT2Model (its `get_layer_list`
    finds `h`; `layers.1` is no module of GPT-2's, and a sparsify user's hook on it fails)."""
    from sparsify.utils import get_layer_list
    from transformers import AutoModel

    model, x = real_acts
    sae, src = source_folder("topk", model, x, tmp_path)
    r = convert(src, "sparsify", tmp_path / "sp").ok()
    assert "hookpoint 'h.1'" in r.out and "note:" not in r.text, r.text
    coders = SparseCoder.load_many(tmp_path / "sp", local=True)
    assert set(coders) == {"h.1"}
    gpt2 = AutoModel.from_pretrained(model)
    assert get_layer_list(gpt2)[0] == "h" and gpt2.base_model.get_submodule("h.1") is gpt2.h[1]
    coder = SparseCoder.load_from_disk(tmp_path / "sp" / "h.1")

    def encode(x_ND):
        enc = coder.encode(x_ND)
        return torch.zeros(x_ND.shape[0], sae.d_sae).scatter(1, enc.top_indices, enc.top_acts)

    def decode(latents_NF):
        vals, idx = latents_NF.topk(8, dim=-1)
        return coder.decode(vals, idx)

    check_same(sae, encode, decode, lambda x_ND: coder(x_ND).sae_out, x)
    r = convert(src, "sparsify", tmp_path / "given", "--hookpoint", "transformer.h.1").ok()  # the name given is kept
    assert set(SparseCoder.load_many(tmp_path / "given", local=True)) == {"transformer.h.1"}
    assert resolve_sae(tmp_path / "given" / "transformer.h.1").sae.cfg.metadata["hook_name"] == HOOK


@pytest.mark.parametrize("model, hookpoint", [("gpt2", "h.1"), ("openai-community/gpt2-medium", "h.1"),
                                               ("EleutherAI/pythia-70m", "layers.1"), ("tiiuae/falcon-7b", "h.1"),
                                               # a folder on the machine that trained it: no hub name, no config
                                               ("/home/someone/models/gpt2", "h.1")])
def test_sparsify_hookpoint_of_a_known_family_whose_config_is_not_here(tmp_path, model, hookpoint):
    sae = saes.create_sae("topk", 16, 32, k=4, metadata={"hook_name": HOOK, "model_name": model})
    r = convert(saes.save_sae(sae, tmp_path / "src"), "sparsify", tmp_path / "sp").ok()
    assert f"hookpoint {hookpoint!r}" in r.out and "note:" not in r.text, r.text


def test_a_config_with_its_own_code_is_never_run_to_find_the_hookpoint(tmp_path, monkeypatch):
    """A model folder whose config transformers does not know, with the code to build it: that code is not run
    (not even when the user would answer y to transformers' question), and the hookpoint falls back to
    sparsify's usual name with a note."""
    ran = tmp_path / "remote code ran"
    folder = tmp_path / "weird-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["WeirdForCausalLM"], "model_type": "weirdo", "num_hidden_layers": 4, "hidden_size": 16,
        "auto_map": {"AutoConfig": "configuration_weird.WeirdConfig", "AutoModel": "modeling_weird.WeirdModel"}}))
    (folder / "configuration_weird.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    monkeypatch.setattr("builtins.input", lambda *a: "y")
    from saes.formats.base import hf_decoder_layers
    from saes.formats.sparsify import default_hookpoint

    sae = saes.create_sae("topk", 16, 32, k=4, metadata={"hook_name": HOOK, "model_name": str(folder)})
    assert hf_decoder_layers(str(folder)) is None
    with pytest.warns(Warning, match="give --hookpoint"):
        assert default_hookpoint(sae) == "layers.1"
    assert not ran.exists()


def test_an_sae_dictionary_learning_made_goes_to_saelens_with_its_outputs(real_acts, tmp_path):
    """A researcher holding dictionary_learning's BatchTopKSAE hands it to SAELens users, and back."""
    model, x = real_acts
    d_in = x.shape[1]
    ae = BatchTopKSAE(d_in, 128, 8)
    with torch.no_grad():
        ae.b_dec.normal_(0, 0.3)
        ae.threshold.fill_(torch.nn.functional.relu(ae.encoder(x - ae.b_dec)).quantile(0.96).item())
    folder = tmp_path / "trainer_0"
    folder.mkdir()
    torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, folder / "ae.pt")  # as trainSAE writes it
    (folder / "config.json").write_text(json.dumps({"trainer": {
        "dict_class": "BatchTopKSAE", "trainer_class": "BatchTopKTrainer", "activation_dim": d_in, "dict_size": 128,
        "k": 8, "layer": 1, "lm_name": model, "submodule_name": "resid_post_layer_1"}}, indent=4))

    convert(folder, "saelens", tmp_path / "sl").ok()
    sl = SaeLensSAE.load_from_disk(str(tmp_path / "sl"))
    assert (ae.encode(x) > 0).sum().item() > x.shape[0]
    torch.testing.assert_close(sl.encode(x), ae.encode(x), **TOL)
    torch.testing.assert_close(sl(x), ae(x), **TOL)
    assert sl.cfg.metadata.hook_name == HOOK and sl.cfg.metadata.model_name == model
    convert(tmp_path / "sl", "dictionary_learning", tmp_path / "dl").ok()  # and back: its own class again
    again, _ = load_dictionary(str(tmp_path / "dl"), "cpu")
    assert type(again) is BatchTopKSAE
    torch.testing.assert_close(again.encode(x), ae.encode(x), **TOL)


def test_an_sae_sparsify_made_goes_to_dictionary_learning_with_its_outputs(real_acts, tmp_path):
    model, x = real_acts
    from sparsify import SparseCoderConfig

    coder = SparseCoder(x.shape[1], SparseCoderConfig(num_latents=128, k=8), device="cpu")
    run = tmp_path / "run"
    coder.save_to_disk(run / "layers.1")
    (run / "config.json").write_text(json.dumps({"model": model, "hookpoints": ["layers.1"]}))

    convert(run / "layers.1", "dictionary_learning", tmp_path / "dl").ok()
    ae, _ = load_dictionary(str(tmp_path / "dl"), "cpu")
    enc = coder.encode(x)
    dense = torch.zeros(x.shape[0], 128).scatter(1, enc.top_indices, enc.top_acts)
    assert type(ae).__name__ == "AutoEncoderTopK" and (dense > 0).sum().item() > x.shape[0]
    torch.testing.assert_close(ae.encode(x), dense, **TOL)
    torch.testing.assert_close(ae(x), coder(x).sae_out, **TOL)


@pytest.mark.parametrize("name, target, says", [
    ("matryoshka", "sparsify", "a matryoshka_batchtopk SAE cannot be saved for sparsify"),
    ("batchtopk", "sparsify", "a batchtopk SAE cannot be saved for sparsify"),
    ("jumprelu", "sparsify", "a jumprelu SAE cannot be saved for sparsify"),
    ("relu", "sparsify", "a standard SAE cannot be saved for sparsify"),
    ("topk", "neuronpedia", "Neuronpedia has no file format for SAE weights"),
])
def test_what_a_target_cannot_hold_is_refused_in_one_line_and_nothing_is_written(real_acts, tmp_path, name, target,
                                                                                 says):
    model, x = real_acts
    _, src = source_folder(name, model, x, tmp_path)
    r = convert(src, target, tmp_path / "out").no_traceback()
    assert r.rc == 2 and says in r.err, r.text
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--to saelens" in errors[0], r.err  # what to do instead
    assert not (tmp_path / "out").exists()
    no_leftovers(tmp_path)


def test_a_hook_dictionary_learning_cannot_read_is_refused_naming_it(tmp_path):
    sae = saes.create_sae("topk", 64, 128, k=8, metadata={"hook_name": "blocks.1.attn.hook_z", "model_name": "m"})
    src = saes.save_sae(sae, tmp_path / "src")
    r = convert(src, "dictionary_learning", tmp_path / "out").no_traceback()
    assert r.rc == 2 and "an SAE at blocks.1.attn.hook_z cannot be saved for dictionary_learning" in r.err, r.text
    assert not (tmp_path / "out").exists()
    no_leftovers(tmp_path)


def test_an_existing_out_is_replaced_only_with_overwrite_and_only_when_it_is_an_sae(real_acts, tmp_path):
    model, x = real_acts
    _, src = source_folder("topk", model, x, tmp_path)
    out = tmp_path / "out"
    convert(src, "saelens", out).ok()
    r = convert(src, "dictionary_learning", out)
    assert r.rc == 2 and "pass --overwrite" in r.err and (out / "cfg.json").is_file(), r.text
    convert(src, "dictionary_learning", out, "--overwrite").ok()
    assert sorted(p.name for p in out.iterdir()) == ["ae.pt", "config.json"]  # replaced whole, no SAELens file left
    no_leftovers(tmp_path)

    r = convert(src, "dictionary_learning", src, "--overwrite")  # the original itself, or the folder holding it
    assert r.rc == 2 and "holds the SAE being converted" in r.err and (src / "cfg.json").is_file(), r.text
    assert convert(src, "saelens", tmp_path, "--overwrite").rc == 2 and (src / "cfg.json").is_file()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    r = convert(src, "saelens", mine, "--overwrite")
    assert r.rc == 2 and "notes.txt, which is no part of one SAE" in r.err and (mine / "notes.txt").read_text() == "mine", r.text



def test_a_hookpoint_for_a_target_that_has_none_is_refused_before_anything_is_written(real_acts, tmp_path):
    """--hookpoint names a module in a sparsify run; given with another --to it would be dropped unseen."""
    model, x = real_acts
    _, src = source_folder("topk", model, x, tmp_path)
    r = convert(src, "saelens", tmp_path / "out", "--hookpoint", "h.1")
    assert r.rc == 2 and "--to saelens has none: drop it" in r.err and not (tmp_path / "out").exists(), r.text
    no_leftovers(tmp_path)

def test_overwrite_never_deletes_what_sits_beside_the_sae(real_acts, tmp_path):
    """--overwrite replaces a folder of one SAE; a dictionary_learning trainer folder's checkpoints/ and a sparsify
    run's other layers are refused, kept as they are."""
    model, x = real_acts
    sae, src = source_folder("topk", model, x, tmp_path)
    trainer = dictionary_learning.save(sae, tmp_path / "trainer_0")
    (trainer / "checkpoints").mkdir()
    (trainer / "checkpoints" / "ae_100.pt").write_bytes(b"a checkpoint")
    r = convert(src, "saelens", trainer, "--overwrite").no_traceback()
    assert r.rc == 2 and "checkpoints, which is no part of one SAE" in r.err, r.text
    assert (trainer / "checkpoints" / "ae_100.pt").is_file() and (trainer / "ae.pt").is_file()

    layer0 = saes.create_sae("topk", x.shape[1], 128, k=8, metadata={"hook_name": "blocks.0.hook_resid_post",
                                                                     "model_name": model})
    run = tmp_path / "run"
    convert(saes.save_sae(layer0, tmp_path / "layer0"), "sparsify", run).ok()
    convert(src, "sparsify", run).ok()
    r = convert(src, "saelens", run, "--overwrite").no_traceback()
    assert r.rc == 2 and "h.0, h.1, which is no part of one SAE" in r.err, r.text
    assert hookpoint_folders(run) == ["h.0", "h.1"]
    no_leftovers(tmp_path)


def test_a_failure_midway_leaves_no_half_folder_and_the_earlier_one_intact(real_acts, tmp_path, monkeypatch):
    """A crash (here: a full disk) between ae.pt and config.json: no folder of ae.pt alone, and with
    --overwrite the earlier SAE is still there, whole."""
    model, x = real_acts
    _, src = source_folder("topk", model, x, tmp_path)
    real_write = dictionary_learning.atomic_write_bytes

    def full_disk_at_config(path, data):
        if path.name == "config.json":
            raise OSError(28, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(dictionary_learning, "atomic_write_bytes", full_disk_at_config)
    r = convert(src, "dictionary_learning", tmp_path / "new")
    assert r.rc != 0 and "No space left" in r.err and str(tmp_path / "new" / "config.json") in r.err, r.text
    assert not (tmp_path / "new").exists()
    no_leftovers(tmp_path)

    monkeypatch.undo()
    convert(src, "saelens", tmp_path / "old").ok()
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    monkeypatch.setattr(dictionary_learning, "atomic_write_bytes", full_disk_at_config)
    assert convert(src, "dictionary_learning", tmp_path / "old", "--overwrite").rc != 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before
    no_leftovers(tmp_path)


def test_saving_into_an_existing_trainer_folder_never_leaves_the_old_config_beside_new_weights(real_acts, tmp_path,
                                                                                             monkeypatch):
    """dictionary_learning.save into a folder that holds an earlier SAE (and more: checkpoints/), cut off after
    ae.pt: the old config.json (AutoEncoderTopK) beside the new BatchTopKSAE weights loaded them as TopK."""
    model, x = real_acts
    topk, _ = source_folder("topk", model, x, tmp_path)
    batchtopk, _ = source_folder("batchtopk", model, x, tmp_path)
    folder = dictionary_learning.save(topk, tmp_path / "trainer_0")
    (folder / "checkpoints").mkdir()
    real_write = dictionary_learning.atomic_write_bytes

    def crash_at_config(path, data):
        if path.name == "config.json":
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(dictionary_learning, "atomic_write_bytes", crash_at_config)
    with pytest.raises(KeyboardInterrupt):
        dictionary_learning.save(batchtopk, folder)
    assert not (folder / "config.json").exists() and (folder / "checkpoints").is_dir()
    with pytest.raises(FileNotFoundError):  # refused by dictionary_learning, not loaded with the wrong class
        load_dictionary(str(folder), "cpu")
    with pytest.raises(KeyboardInterrupt):  # a new folder: not there at all
        dictionary_learning.save(batchtopk, tmp_path / "trainer_1")
    assert not (tmp_path / "trainer_1").exists()
    no_leftovers(tmp_path)


def test_a_gemma_scope_sae_goes_to_dictionary_learning_at_the_hook_given(real_acts, tmp_path):
    """Gemma Scope's params.npz records no hook: refused until --hook names it, then dictionary_learning computes
    what the Gemma Scope tutorial's JumpReLUSAE does."""
    from helpers.foreign_saes import gemma_scope_reference, random_gemma_scope, write_gemma_scope

    model, x = real_acts
    params = random_gemma_scope(x.shape[1], 128, seed=3)
    npz = write_gemma_scope(tmp_path / "gs" / "params.npz", params)
    r = convert(npz, "dictionary_learning", tmp_path / "dl", "--model", model).no_traceback()
    assert r.rc == 2 and "record no hook point" in r.err and "--hook" in r.err, r.text
    assert not (tmp_path / "dl").exists()

    convert(npz, "dictionary_learning", tmp_path / "dl", "--model", model, "--hook", HOOK).ok()
    ae, config = load_dictionary(str(tmp_path / "dl"), "cpu")
    acts, recon = gemma_scope_reference(params, x)
    assert type(ae).__name__ == "JumpReluAutoEncoder" and config["trainer"]["submodule_name"] == "resid_post_layer_1"
    assert (acts > 0).sum().item() > x.shape[0]
    torch.testing.assert_close(ae.encode(x), acts, **TOL)
    torch.testing.assert_close(ae(x), recon, **TOL)


def test_a_topk_transcoder_goes_to_sparsify_and_is_refused_for_dictionary_learning(real_acts, tmp_path):
    model, x = real_acts
    tc = saes.create_sae("topk", x.shape[1], 128, k=8, d_out=x.shape[1], apply_b_dec_to_input=False,
                         generator=torch.Generator().manual_seed(2),
                         metadata={"hook_name": "blocks.1.hook_resid_pre", "hook_name_out": HOOK, "model_name": model})
    src = saes.save_sae(tc, tmp_path / "tc")
    r = convert(src, "dictionary_learning", tmp_path / "dl").no_traceback()
    assert r.rc == 2 and "a transcoder cannot be saved for dictionary_learning" in r.err, r.text
    assert not (tmp_path / "dl").exists()

    convert(src, "sparsify", tmp_path / "sp").ok()
    coder = SparseCoder.load_from_disk(tmp_path / "sp" / "h.1")
    assert coder.cfg.transcode
    torch.testing.assert_close(coder(x).sae_out, tc(x).recon, **TOL)
    back = resolve_sae(tmp_path / "sp" / "h.1").sae
    assert back.cfg.metadata["hook_name"] == "blocks.1.hook_resid_pre" and back.cfg.metadata["hook_name_out"] == HOOK


def test_neuronpedia_is_no_listed_target_but_a_user_who_asks_is_told_what_to_do(tmp_path):
    """--to's choices are what it writes; `--to neuronpedia` is answered with Neuronpedia's two inputs."""
    r = saesteer("convert", "--help").ok()
    listed = r.out.split("--to {", 1)[1].split("}", 1)[0].split(",")
    assert listed == ["saesteer", "saelens", "sparsify", "dictionary_learning"], r.out
    r = convert(tmp_path / "any", "neuronpedia", tmp_path / "out").no_traceback()
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert r.rc == 2 and len(errors) == 1, r.text
    assert "--to saelens" in errors[0] and "features export STORE OUT --format neuronpedia" in errors[0], r.err


def test_a_topk_transcoder_is_refused_for_saelens_which_has_no_class_for_it(real_acts, tmp_path):
    """SAELens has no TopK transcoder: --to saelens is refused (SAE.load_from_disk would raise KeyError on
    the folder), --to saesteer writes it and names only saesteer as its loader."""
    model, x = real_acts
    tc = saes.create_sae("topk", x.shape[1], 128, k=8, d_out=x.shape[1], apply_b_dec_to_input=False,
                         metadata={"hook_name": "blocks.1.hook_resid_pre", "hook_name_out": HOOK, "model_name": model})
    src = saes.save_sae(tc, tmp_path / "tc")
    r = convert(src, "saelens", tmp_path / "sl").no_traceback()
    assert r.rc == 2 and "SAELens has no TopK transcoder class" in r.err and "--to sparsify" in r.err, r.text
    assert not (tmp_path / "sl").exists()
    no_leftovers(tmp_path)

    r = convert(src, "saesteer", tmp_path / "ours").ok()
    assert "topk transcoder" in r.out and "sae_lens" not in r.out.split("load it with", 1)[1], r.out
    with pytest.raises(KeyError):  # what the message no longer promises
        SaeLensSAE.load_from_disk(str(tmp_path / "ours"))
    torch.testing.assert_close(resolve_sae(tmp_path / "ours").sae(x).recon, tc(x).recon, **TOL)


def test_the_printed_load_lines_work_as_pasted_for_a_folder_with_spaces_quotes_and_accents(real_acts, tmp_path):
    import shlex

    model, x = real_acts
    sae, src = source_folder("topk", model, x, tmp_path)
    out = tmp_path / "it's my café dir" / "sae"
    r = convert(src, "saelens", out).ok()
    python_call, saesteer_args = r.out.split("load it with ", 1)[1].strip().split(", or saesteer's ")
    loaded = eval(python_call, {"sae_lens": __import__("sae_lens")})  # what a user pastes into Python
    check_same(sae, loaded.encode, loaded.decode, loaded, x)
    assert shlex.split(saesteer_args) == ["--sae", str(out)]  # and into a shell


def test_what_a_killed_convert_left_is_cleaned_or_put_back_by_the_next(real_acts, tmp_path):
    """SIGKILL runs no `except`: a half-built folder stays beside --out, and with --overwrite the earlier SAE
    may be moved aside with the new one not yet in place. The next convert to that --out removes the first
    and puts the second back (its --out missing) or removes it (the new one there)."""
    model, x = real_acts
    _, src = source_folder("topk", model, x, tmp_path)
    share = tmp_path / "share"
    convert(src, "saelens", share / "sae").ok()
    before = {p.name: p.read_bytes() for p in (share / "sae").iterdir()}
    (share / "sae").rename(share / ".sae.old-k1ll3d")  # killed between moving it aside and renaming the new in
    (share / ".sae.convert-k1ll3d").mkdir()
    (share / ".sae.convert-k1ll3d" / "ae.pt").write_bytes(b"half")

    r = convert(src, "dictionary_learning", share / "sae")  # no --overwrite: the SAE put back is kept
    assert r.rc == 2 and "pass --overwrite" in r.err, r.text
    assert {p.name: p.read_bytes() for p in (share / "sae").iterdir()} == before
    no_leftovers(share)

    (share / ".sae.old-k1ll3d").mkdir()  # killed after the new one was in place, before the old was removed
    convert(src, "dictionary_learning", share / "sae", "--overwrite").ok()
    assert sorted(p.name for p in (share / "sae").iterdir()) == ["ae.pt", "config.json"]
    no_leftovers(share)



KILLED_AT_THE_RENAME_IN = """
import os, sys
rename = os.rename
def killed_before_the_new_hookpoint_is_in(src, dst):  # SIGKILL's effect: no except, no finally
    if ".convert-" in str(src) and os.path.basename(str(dst)) == "h.1":
        os._exit(9)
    rename(src, dst)
os.rename = killed_before_the_new_hookpoint_is_in
from saesteer.cli import main
main(sys.argv[1:])
"""


def test_a_hookpoint_a_killed_convert_moved_aside_goes_back_to_its_own_run_only(real_acts, tmp_path):
    """--overwrite of a run's hookpoint moves the earlier one aside, out of the run (load_many reads every folder
    in it), into the folder holding the run, which often holds other runs with the same layers.N. Killed before
    the new one is in, the earlier one is put back by the next convert into that run, never into another."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    model, x = real_acts
    _, src1 = source_folder("topk", model, x, tmp_path)
    _, src0 = layer0_source(model, x, tmp_path)
    share = tmp_path / "share"
    convert(src1, "sparsify", share / "run_a").ok()
    before = {p.name: p.read_bytes() for p in (share / "run_a" / "h.1").iterdir()}
    convert(src0, "sparsify", share / "run_b").ok()
    root = str(Path(__file__).resolve().parents[1])
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_THE_RENAME_IN, "convert", str(src1), "--to", "sparsify",
                             "--out", str(share / "run_a"), "--overwrite"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert killed.returncode == 9 and not (share / "run_a" / "h.1").exists(), killed.stderr[-2000:]

    convert(src1, "sparsify", share / "run_b").ok()  # another run's h.1: run_a's earlier one stays aside
    assert sorted(p.name for p in (share / "run_b").iterdir()) == ["config.json", "h.0", "h.1"]
    convert(src0, "sparsify", share / "run_a").ok()  # the next convert into run_a puts its h.1 back
    assert {p.name: p.read_bytes() for p in (share / "run_a" / "h.1").iterdir()} == before
    assert set(SparseCoder.load_many(share / "run_a", local=True)) == {"h.0", "h.1"}
    no_leftovers(share)

def test_a_foreign_sae_converted_to_saesteer_steers_with_its_local_model(real_acts, tmp_path):
    """A sparsify run naming a local model (no weights hash recorded): `--to saesteer` cuts the model's folder
    from the record, and `saesteer steer --model FOLDER` still takes it (a cut path "gpt2" matched nothing)."""
    model, x = real_acts
    from sparsify import SparseCoderConfig

    coder = SparseCoder(x.shape[1], SparseCoderConfig(num_latents=128, k=8), device="cpu")
    coder.save_to_disk(tmp_path / "run" / "layers.1")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": model, "hookpoints": ["layers.1"]}))
    convert(tmp_path / "run" / "layers.1", "saesteer", tmp_path / "ours").ok()
    assert model not in (tmp_path / "ours" / "saesteer.json").read_text()  # this machine's layout is not shared
    r = saesteer("steer", "--sae", tmp_path / "ours", "--model", model, "--prompt", "def café(x):  # 東京",
                 "--latent", "3:clamp=8", "--max-new-tokens", "3", "--no-progress").no_traceback()
    assert r.rc == 0, r.text


def test_a_sparsify_run_takes_the_sae_of_another_layer_beside_its_own(real_acts, tmp_path):
    """Several layers' SAEs shared as one sparsify run, as `SparseCoder.load_many` reads one: each convert adds
    its hookpoint; one already there is replaced only with --overwrite; another model's SAE is refused."""
    model, x = real_acts
    sae1, src1 = source_folder("topk", model, x, tmp_path)
    sae0, src0 = layer0_source(model, x, tmp_path)
    run = tmp_path / "run"
    convert(src1, "sparsify", run).ok()
    convert(src0, "sparsify", run).ok()
    coders = SparseCoder.load_many(run, local=True)
    assert set(coders) == {"h.0", "h.1"}
    assert json.loads((run / "config.json").read_text())["hookpoints"] == ["h.0", "h.1"]
    torch.testing.assert_close(coders["h.0"](x).sae_out, sae0(x).recon, **TOL)
    torch.testing.assert_close(coders["h.1"](x).sae_out, sae1(x).recon, **TOL)

    r = convert(src0, "sparsify", run)
    assert r.rc == 2 and "already holds hookpoint h.0" in r.err, r.text
    convert(src1, "sparsify", run, "--hookpoint", "h.0")  # refused: not the SAE's hook
    convert(src0, "sparsify", run, "--overwrite").ok()
    other = saes.create_sae("topk", x.shape[1], 128, k=8, metadata={"hook_name": "blocks.2.hook_resid_post",
                                                                    "model_name": "org/another"})
    r = convert(saes.save_sae(other, tmp_path / "other"), "sparsify", run)
    assert r.rc == 2 and "org/another" in r.err, r.text
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "h.0", "h.1"]
    assert set(SparseCoder.load_many(run, local=True)) == {"h.0", "h.1"}
    no_leftovers(tmp_path)


def test_a_replacement_that_cannot_be_renamed_in_puts_the_earlier_folder_back(tmp_path):
    """--overwrite (and a re-written checkpoint) move the earlier folder aside first: a failed rename of
    the new one brings it back, whole, rather than leaving nothing at its name."""
    from saes.fileio import put_folder_in_place

    final = tmp_path / "sae"
    final.mkdir()
    (final / "cfg.json").write_text("the earlier SAE")
    with pytest.raises(FileNotFoundError):
        put_folder_in_place(tmp_path / "never-built", final, tmp_path / ".sae.old-x")
    assert (final / "cfg.json").read_text() == "the earlier SAE" and not (tmp_path / ".sae.old-x").exists()


def test_an_out_in_a_read_only_folder_is_refused_naming_that_folder(real_acts, tmp_path, monkeypatch):
    """Not the random name of the folder it would have built there (`.sae.convert-x1y2z3`), which never existed.
    (chmod does not stop root, who runs CI: the refusal is the one mkdtemp raises in a read-only folder.)"""
    import tempfile

    model, x = real_acts
    _, src = source_folder("topk", model, x, tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()

    def read_only(prefix, dir):
        raise PermissionError(13, "Permission denied", f"{dir}/{prefix}x1y2z3")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    r = convert(src, "saelens", shared / "sae").no_traceback()
    assert r.rc != 0 and f"{shared}: Permission denied" in r.err and ".convert-" not in r.err, r.text


def test_sparsify_default_hookpoint_is_found_without_notes_about_hookpoints_it_only_tried(real_acts, tmp_path):
    """An SAE on blocks.1.hook_resid_pre of a model whose config is not at hand: layers.0 is its hookpoint; the
    MLP and attention hookpoints tried first said "cannot tell from ...'s config whether blocks.1.hook_mlp_out"."""
    _, x = real_acts
    sae = saes.create_sae("topk", x.shape[1], 128, k=8, metadata={"hook_name": "blocks.1.hook_resid_pre",
                                                                 "model_name": "nobody/not-on-this-machine"})
    r = convert(saes.save_sae(sae, tmp_path / "src"), "sparsify", tmp_path / "sp").ok()
    assert "hookpoint 'layers.0'" in r.out and "hook_mlp_out" not in r.text, r.text
    # the one note says the model's module names are not known here, and how to name GPT-2's
    assert r.text.count("note:") == 1 and "config is not on this machine" in r.text and "--hookpoint" in r.text, r.text
    assert "h.0 on GPT-2" in r.text, r.text
