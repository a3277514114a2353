"""`saesteer eval` leaves out the tokens an SAE's training cache left out (saesteer.json
`data.exclude_tokens`). SAEs side by side are measured on the same positions, so with SAEs whose caches
left out different tokens every SAE is measured without all of them: eval says which SAE that takes
positions from (its figures are no longer over what its training read) and how to measure it as trained.
An SAE of another library records no exclusions: BOS only (--exclude-bos), or the others' when beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

HOOK = "blocks.1.hook_resid_post"


def _trained_on(folder: Path, policy: str, seed: int) -> Path:
    """A saesteer SAE folder whose saesteer.json records the cache policy it was trained on, as `train`
    writes it (`data.exclude_tokens`: `saesteer cache --exclude-tokens`)."""
    import saes

    from helpers.feature_fixtures import make_sae

    sae = make_sae("topk", d_in=64, d_sae=96, seed=seed, metadata={"hook_name": HOOK})
    saes.save_sae(sae, folder, provenance={"hook_name": HOOK, "data": {"exclude_tokens": policy}})
    return folder


@pytest.fixture(scope="module")
def setting(real_models, real_corpus, tmp_path_factory):
    from helpers.real_models import write_paragraph_splits
    from training.plan import excluded_ids
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("exclusions")
    llama = real_models.path("llama")  # BOS and EOS distinct: documents packed with EOS between them
    tok = AutoTokenizer.from_pretrained(llama)
    saes = {p: _trained_on(root / p, p, seed) for seed, p in enumerate(("special", "bos", "none"))}
    ids = {p: sorted(excluded_ids(tok, p)) for p in ("special", "bos", "none")}
    assert len(ids["special"]) > len(ids["bos"]) == 1
    return llama, write_paragraph_splits(real_corpus, root / "paragraphs", limit=200), saes, ids, root


def _eval(setting, out: str, *sae_args: str, extra: tuple[str, ...] = ()):
    llama, data, _, _, root = setting
    r = saesteer("eval", *(a for s in sae_args for a in ("--sae", s)), "--model", llama, "--dataset", data,
                 "--context-length", 32, "--contexts", 6, "--ce-contexts", 2, "--absorption", "false",
                 "--probing", "false", "--quiet", "--no-progress", "--out", root / out, *extra).ok()
    doc = json.loads((root / out / "eval.json").read_text())
    return r.out, doc["data"]["excluded_token_ids"], {n: e["metrics"]["eval_rows"] for n, e in doc["saes"].items()}


def test_saes_with_different_exclusions_are_measured_on_the_union_and_the_note_names_who(setting):
    _, _, saes, ids, _ = setting
    out, excluded, rows = _eval(setting, "both", f"special={saes['special']}", f"bos={saes['bos']}")
    assert excluded == ids["special"] and rows["special"] == rows["bos"]  # the same positions side by side
    notes = [line for line in out.splitlines() if line.startswith("note: SAE")]
    assert len(notes) == 1 and "'bos'" in notes[0] and "evaluate it alone" in notes[0], out  # before: no word
    assert str(ids["bos"]) in notes[0] and str(ids["special"]) in notes[0] and "--exclude-bos" not in notes[0]
    # alone, each is measured as trained, without a note; the EOS positions are back for the bos one
    out, excluded, alone = _eval(setting, "bos", f"bos={saes['bos']}")
    assert excluded == ids["bos"] and alone["bos"] > rows["bos"] and "note: SAE" not in out
    out, excluded, _ = _eval(setting, "special", f"special={saes['special']}")
    assert excluded == ids["special"] and "note: SAE" not in out


def test_a_cache_that_kept_bos_is_pointed_at_exclude_bos_false(setting):
    _, _, saes, ids, _ = setting
    out, excluded, _ = _eval(setting, "none", f"none={saes['none']}")
    assert excluded == ids["bos"] and "note: SAE 'none'" in out and "pass --exclude-bos false" in out, out
    assert "evaluate it alone" not in out
    out, excluded, _ = _eval(setting, "none-kept", f"none={saes['none']}", extra=("--exclude-bos", "false"))
    assert excluded == [] and "note: SAE" not in out


def test_a_saelens_sae_beside_one_is_measured_on_the_same_positions(setting):
    from helpers.foreign_saes import saelens_random

    llama, _, saes, ids, root = setting
    foreign = saelens_random(root / "saelens", model_name=str(llama), hook_name=HOOK)
    out, excluded, rows = _eval(setting, "foreign", f"saelens={foreign}", f"special={saes['special']}")
    assert excluded == ids["special"] and rows["saelens"] == rows["special"]
    assert "note: SAE" not in out  # it records no exclusions to compare with
    _, excluded, _ = _eval(setting, "foreign-alone", f"saelens={foreign}")
    assert excluded == ids["bos"]
