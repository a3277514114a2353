"""A TopK SAE shared for sparsify users (`saes.formats.sparsify.save`), loaded by sparsify's own
`SparseCoder.load_from_disk` / `load_many`, on a real tiny GPT-2's activations; back into saesteer
as the same SAE at the same hook; what sparsify cannot compute refused; a full disk a one-line
error naming the file (safetensors' writer reports it as a SafetensorError: `saes.fileio.atomic_save_safetensors`).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sparsify")
from sparsify import SparseCoder  # noqa: E402

import saes  # noqa: E402
from saes.fingerprint import sae_fingerprint  # noqa: E402
from saes.formats import resolve_sae, sparsify  # noqa: E402
from saes.io import SAEFormatError  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread")]

HOOKPOINTS = {"blocks.1.hook_resid_post": "h.1", "blocks.0.hook_mlp_out": "h.0.mlp"}


@pytest.fixture(scope="module")
def real_acts(real_models):
    from helpers.publish_acts import activations_on_texts

    path = real_models.path("gpt2")
    return path, activations_on_texts(path, list(HOOKPOINTS))


def topk(hook: str, model_name: str, arch: str = "topk", d_in: int = 64) -> saes.SAE:
    kw = {"matryoshka_widths": [32, 128]} if arch == "matryoshka_batchtopk" else {}
    return saes.create_sae(arch, d_in, 128, **({} if arch == "jumprelu" else {"k": 8}), **kw,
                           generator=torch.Generator().manual_seed(3),
                           metadata={"hook_name": hook, "model_name": model_name})


@pytest.mark.parametrize("hook", list(HOOKPOINTS))
def test_sparsify_loads_a_shared_topk_sae_with_our_outputs_and_it_comes_back_the_same(real_acts, tmp_path, hook):
    model_dir, acts = real_acts
    x = acts[hook]
    sae = topk(hook, str(model_dir))
    folder = sparsify.save(sae, tmp_path / "run", HOOKPOINTS[hook])

    coder = SparseCoder.load_from_disk(folder)
    enc = coder.encode(x)
    dense = torch.zeros(x.shape[0], sae.d_sae).scatter(1, enc.top_indices, enc.top_acts)
    latents = sae.encode(x)
    assert (latents > 0).sum(-1).float().mean() > 4  # most rows have their k latents: the comparison is not empty
    torch.testing.assert_close(dense, latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(coder.decode(enc.top_acts, enc.top_indices), sae.decode(latents), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(coder(x).sae_out, sae(x).recon, rtol=1e-5, atol=1e-5)
    assert set(SparseCoder.load_many(tmp_path / "run", local=True)) == {HOOKPOINTS[hook]}

    back = resolve_sae(folder)
    assert back.sae.cfg.metadata["hook_name"] == hook and back.sae.cfg.metadata["model_name"] == str(model_dir)
    assert sae_fingerprint(back.sae) == sae_fingerprint(sae)


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk", "jumprelu"])
def test_threshold_saes_are_refused_for_sparsify_naming_the_architecture(tmp_path, arch):
    with pytest.raises(SAEFormatError, match=f"a {arch} SAE cannot be saved for sparsify.*saes.save_sae"):
        sparsify.save(topk("blocks.1.hook_resid_post", "gpt2", arch), tmp_path / "run", "h.1")
    assert not (tmp_path / "run").exists()


def test_a_hookpoint_that_is_not_the_sae_hook_is_refused_naming_both(tmp_path):
    with pytest.raises(SAEFormatError, match=r"'h\.0\.mlp' is read as blocks\.0\.hook_mlp_out, but the SAE reads "
                                             r"blocks\.1\.hook_resid_post"):
        sparsify.save(topk("blocks.1.hook_resid_post", "gpt2"), tmp_path / "run", "h.0.mlp")


def test_a_second_model_in_one_run_folder_is_refused(tmp_path):
    sparsify.save(topk("blocks.1.hook_resid_post", "gpt2"), tmp_path / "run", "h.1")
    sparsify.save(topk("blocks.0.hook_mlp_out", "gpt2"), tmp_path / "run", "h.0.mlp")  # same run: both listed
    assert set(SparseCoder.load_many(tmp_path / "run", local=True)) == {"h.1", "h.0.mlp"}
    with pytest.raises(SAEFormatError, match="a run on model 'gpt2', but this SAE's model is 'EleutherAI/pythia-70m'"):
        sparsify.save(topk("blocks.1.hook_resid_post", "EleutherAI/pythia-70m"), tmp_path / "run", "layers.1")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "h.0.mlp", "h.1"]  # nothing written


def test_a_full_disk_while_sharing_is_an_os_error_naming_the_file(tmp_path):
    """A file size limit makes safetensors' own write fail as a full disk does (EFBIG; a tmpfs needs root)."""
    from saesteer.boundary import message_for

    from helpers.full_disk import file_size_limit

    sae = topk("blocks.1.hook_resid_post", "gpt2", d_in=512)  # 512 x 128 floats: 256 KiB per matrix
    with file_size_limit(128 * 1024), pytest.raises(OSError) as caught:
        sparsify.save(sae, tmp_path / "run", "h.1")
    text, status = message_for(caught.value)
    assert text.startswith(f"{tmp_path / 'run' / 'h.1' / 'sae.safetensors'}: File too large"), text
    assert "file size limit" in text and "bug" not in text and status == 1, text
    assert [p.name for p in (tmp_path / "run" / "h.1").iterdir()] == []  # no partial or temporary file left
