"""benchmarks/toy_concepts.py: the toy benchmark's --sae settings, concept families and failure reasons."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from toy_concepts import ToySAE, families_of, parse_sae, why_failed  # noqa: E402

from features.records import ConceptMatch  # noqa: E402


def test_parse_sae_overrides_only_the_keys_given():
    base = ToySAE(d_sae=1024, k=16, layer=2, tokens=8_000_000)
    s = parse_sae("arch=matryoshka, k=8,lr=2e-3,layer=1,tokens=32M,widths=32/128/1024", base)
    assert s == ToySAE("matryoshka_batchtopk", 1024, 8, 2e-3, 1, 32_000_000, (32, 128, 1024))
    assert s.hook == "blocks.1.hook_resid_post"
    assert parse_sae("lr=width,tokens=500k", s).lr is None
    assert parse_sae("tokens=500k", s).tokens == 500_000
    assert parse_sae("", base) == base
    jr = parse_sae("arch=jumprelu,l0_coefficient=2", base)
    assert jr.l0_coefficient == 2.0 and "no k, L0 penalty 2" in jr.label and jr.slug.endswith("-c2")
    assert parse_sae("l0_coefficient=default", jr).l0_coefficient is None
    # every setting has its own folder
    assert len({parse_sae(t, base).slug for t in ("k=8", "k=16", "lr=2e-3", "layer=1", "widths=64/1024", "arch=batchtopk")}) == 6


@pytest.mark.parametrize("bad", ["d_sae", "width=3", "k=eight", "layer=1.5"])
def test_parse_sae_refuses_bad_settings_naming_them(bad):
    with pytest.raises(SystemExit, match="--sae"):
        parse_sae(bad, ToySAE())


def test_families_group_prefixes_of_three_or_more():
    fams = families_of(["name:anna", "name:ben", "name:tom", "tense:past", "tense:present", "dialogue", "colour", "pos:noun"])
    assert fams["name:*"] == ["name:anna", "name:ben", "name:tom"]
    assert sorted(fams["context (dialogue, question, imperative, tense)"]) == ["dialogue", "tense:past", "tense:present"]
    assert sorted(fams["other categories"]) == ["colour", "pos:noun"]  # a prefix of one is no family


def _m(p, r):
    return ConceptMatch("c", 0, 2 * p * r / (p + r), p, r, 0)


def test_why_failed_reads_precision_recall_and_the_ceiling():
    assert why_failed(_m(0.9, 0.9), ceiling_f1=0.5) == "low ceiling"
    assert why_failed(_m(0.1, 0.9), ceiling_f1=0.95) == "absorbed"
    assert why_failed(_m(0.9, 0.2), ceiling_f1=None) == "split"
    assert why_failed(_m(0.6, 0.7), ceiling_f1=0.9) == "near miss"
    assert why_failed(_m(0.3, 0.2), ceiling_f1=0.9) == "no match"
