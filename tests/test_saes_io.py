"""SAE folders: exact round trips, and clear errors for everything that is not an SAE folder."""

import json
import pickle

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import saes
from saes.io import CFG_FILENAME, PROVENANCE_FILENAME, WEIGHTS_FILENAME, SAEFormatError


@st.composite
def sae_configs(draw):
    arch = draw(st.sampled_from(["topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "standard"]))
    d_in = draw(st.integers(1, 24))
    d_sae = draw(st.integers(2, 96))
    kw = {"apply_b_dec_to_input": draw(st.booleans())}
    if arch in ("topk", "batchtopk", "matryoshka_batchtopk"):
        kw["k"] = draw(st.integers(1, d_sae))
    if arch == "matryoshka_batchtopk":
        inner = draw(st.lists(st.integers(1, d_sae - 1), unique=True, max_size=4))
        kw["matryoshka_widths"] = sorted(inner) + [d_sae]
    return arch, d_in, d_sae, kw, draw(st.integers(0, 2**31 - 1))


def randomized(arch, d_in, d_sae, kw, seed):
    g = torch.Generator().manual_seed(seed)
    sae = saes.create_sae(arch, d_in, d_sae, generator=g, **kw)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.normal_(0, 0.5, generator=g)
        if hasattr(sae, "threshold"):
            sae.threshold.uniform_(0, 0.5, generator=g)
    return sae


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=sae_configs())
def test_save_load_round_trip_is_exact_for_every_architecture(tmp_path_factory, cfg):
    arch, d_in, d_sae, kw, seed = cfg
    sae = randomized(arch, d_in, d_sae, kw, seed)
    folder = tmp_path_factory.mktemp("sae") / "folder"
    saes.save_sae(sae, folder, provenance={"note": "hypothesis"})
    back = saes.load_sae(folder)
    assert type(back) is type(sae) and back.cfg == sae.cfg
    assert saes.read_provenance(folder) == {"note": "hypothesis"}
    x = torch.randn(9, d_in, generator=torch.Generator().manual_seed(seed))
    a, b = sae(x), back(x)
    assert torch.equal(a.recon, b.recon)
    assert torch.equal(a.acts.to_dense(), b.acts.to_dense())
    for name, t in sae.state_dict().items():
        assert torch.equal(t, back.state_dict()[name]), name


def test_overwriting_a_folder_replaces_its_files(tmp_path):
    a = randomized("topk", 8, 16, {"k": 2}, 1)
    b = randomized("topk", 8, 16, {"k": 3}, 2)
    saes.save_sae(a, tmp_path / "s")
    saes.save_sae(b, tmp_path / "s")
    back = saes.load_sae(tmp_path / "s")
    assert back.cfg.k == 3 and torch.equal(back.W_enc, b.W_enc)
    # the checksum in saesteer.json was rewritten with the weights (the load above verified it)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [CFG_FILENAME, WEIGHTS_FILENAME, PROVENANCE_FILENAME]


def test_load_with_dtype_override(tmp_path):
    saes.save_sae(randomized("batchtopk", 8, 16, {"k": 2}, 1), tmp_path / "s")
    assert saes.load_sae(tmp_path / "s", dtype=torch.bfloat16).W_dec.dtype == torch.bfloat16


def test_non_finite_weights_are_never_saved(tmp_path):
    sae = randomized("topk", 8, 16, {"k": 2}, 1)
    with torch.no_grad():
        sae.W_dec[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite values in W_dec"):
        saes.save_sae(sae, tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "sae"
    saes.save_sae(randomized("topk", 8, 16, {"k": 2}, 1), folder)
    return folder


def test_missing_weights_file(saved):
    (saved / WEIGHTS_FILENAME).unlink()
    with pytest.raises(SAEFormatError, match="sae_weights.safetensors is missing"):
        saes.load_sae(saved)


def test_truncated_weights_file(saved):
    w = saved / WEIGHTS_FILENAME
    w.write_bytes(w.read_bytes()[:-40])
    with pytest.raises(SAEFormatError, match="truncated or corrupt"):
        saes.load_sae(saved)


def test_unknown_architecture_lists_the_known_ones(saved):
    cfg = json.loads((saved / CFG_FILENAME).read_text())
    cfg["architecture"] = "gated_plus"
    (saved / CFG_FILENAME).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown SAE architecture 'gated_plus'; known: .*topk"):
        saes.load_sae(saved)


def test_config_and_weights_that_disagree_on_d_in(saved):
    cfg = json.loads((saved / CFG_FILENAME).read_text())
    cfg["d_in"] = 9
    (saved / CFG_FILENAME).write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match=r"W_enc has shape \(8, 16\) but cfg d_in=9"):
        saes.load_sae(saved)


def test_malformed_config_json(saved):
    (saved / CFG_FILENAME).write_text('{"d_in": 8,')
    with pytest.raises(ValueError, match="cfg.json is not valid JSON"):
        saes.load_sae(saved)


def test_pickle_files_are_refused_never_loaded(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "sae.pt").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(SAEFormatError, match="never unpickles"):
        saes.load_sae(folder)
    with pytest.raises(SAEFormatError, match="is a pickle file"):
        saes.load_sae(folder / "sae.pt")


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="SAE folder not found"):
        saes.load_sae(tmp_path / "nope")
