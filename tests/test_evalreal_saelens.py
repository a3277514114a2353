"""`saesteer eval` against SAELens's own `run_evals`, the way a researcher compares the two: their model
(tiny real architectures built locally: GPT-2, Llama with GQA, Gemma-2's post-norm blocks, GPT-NeoX's
parallel attention), SAEs saved by SAELens itself at the residual stream, an MLP output and attention's
hook_z, and a SAELens transcoder (MLP in -> MLP out), evaluated by the CLI on held-out text; then
SAELens's `run_evals` on the same tokens. Where the two define a figure alike they must agree to float
precision; the figures they define differently are documented in docs/evaluation.md ("Comparing with
SAELens and Neuronpedia") and pinned here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import foreign_saes as fs
from saesteer.cli import main

pytestmark = [pytest.mark.usefixtures("one_thread")]

CONTEXT, CONTEXTS = 32, 6
HOOKS = {"resid": "blocks.1.hook_resid_post", "mlp": "blocks.0.hook_mlp_out", "attn": "blocks.1.attn.hook_z"}
TC_IN, TC_OUT = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


class TokenStore:
    """What run_evals reads of an ActivationsStore: fixed token batches (the contexts eval read)."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens, self.store_batch_size_prompts, self.context_size = tokens, len(tokens), tokens.shape[1]

    def get_batch_tokens(self, n: int) -> torch.Tensor:
        return self.tokens[:n]

    def reset_input_dataset(self) -> None:
        pass


def _model_dir(arch: str, real_models, real_corpus, root: Path) -> Path:
    if arch in ("gpt2", "llama", "neox"):
        return real_models.path(arch)
    from helpers.real_models import build_family_tokenizer, save_arch_model

    return save_arch_model(root / arch, arch, build_family_tokenizer("gemma", real_corpus.train_docs, 512),
                           trained_norms=True)


def _heldout_tokens(model, real_corpus) -> torch.Tensor:
    """The contexts `saesteer eval --dataset DIR --context-length 32` reads (the validation split, packed)."""
    from training.sources import contexts_from_text
    from training.text import TextConfig

    text = TextConfig(dataset=str(real_corpus.jsonl_dir), split="validation", context_length=CONTEXT)
    return contexts_from_text(text, model.tokenizer, CONTEXTS)


@pytest.fixture(scope="module", params=["gpt2", "llama", pytest.param("gemma2", marks=pytest.mark.slow),
                                        pytest.param("neox", marks=pytest.mark.slow)])
def setup(request, real_models, real_corpus, tmp_path_factory):
    """(model, its directory, held-out tokens, {name: SAELens folder}) of one architecture: SAEs made and
    saved by SAELens on activations of the model's training text."""
    from evals.activations import collect
    from saesteer.models import load_model
    from training.sources import contexts_from_text
    from training.text import TextConfig

    arch = request.param
    root = tmp_path_factory.mktemp(f"evalreal-{arch}")
    path = _model_dir(arch, real_models, real_corpus, root)
    model = load_model(str(path), device="cpu")
    train = contexts_from_text(TextConfig(dataset=str(real_corpus.jsonl_dir), split="train", context_length=CONTEXT),
                               model.tokenizer, 16)
    acts = collect(model, [*HOOKS.values(), TC_IN, TC_OUT], train, (model.tokenizer.bos_token_id,)).acts
    folders = {}
    for name, hook in HOOKS.items():
        sae = fs.saelens_pca(acts[hook], 3, hook_name=hook, model_name=str(path))
        sae.save_model(root / name)
        folders[name] = root / name
    tc = fs.saelens_pca_transcoder(acts[TC_IN], acts[TC_OUT], 3, hook_name=TC_IN, hook_name_out=TC_OUT,
                                   model_name=str(path))
    tc.save_model(root / "tc")
    folders["tc"] = root / "tc"
    return model, path, _heldout_tokens(model, real_corpus), folders


def _eval_cli(path: Path, folders: dict, real_corpus, out: Path, *extra: str) -> dict:
    args = ["eval", *[a for n, f in folders.items() for a in ("--sae", f"{n}={f}")], "--model", str(path),
            "--dataset", str(real_corpus.jsonl_dir), "--context-length", str(CONTEXT), "--contexts", str(CONTEXTS),
            "--ce-contexts", str(CONTEXTS), "--absorption", "false", "--probing", "false", "--quiet", "--no-progress",
            "--out", str(out), *extra]
    assert main(args) == 0
    return json.loads((out / "eval.json").read_text())


def _run_evals(folder: Path, model, tokens, exclude):
    from sae_lens import SAE as SaeLensSAE
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    every = EvalConfig(batch_size_prompts=len(tokens), n_eval_reconstruction_batches=1,
                       n_eval_sparsity_variance_batches=1, compute_kl=True, compute_ce_loss=True, compute_l2_norms=True,
                       compute_sparsity_metrics=True, compute_variance_metrics=True,
                       compute_featurewise_density_statistics=True)
    return run_evals(SaeLensSAE.load_from_disk(folder), TokenStore(tokens), model, ActivationScaler(), every,
                     exclude_special_tokens=exclude)


def test_activation_metrics_equal_run_evals(setup, real_corpus, tmp_path, capsys) -> None:
    """BOS left out on both sides (ours by default; SAELens: exclude_special_tokens=[BOS]): EV, MSE, cos, L0,
    L1, shrinkage and dead/dense latents are SAELens's figures at every hook kind."""
    model, path, tokens, folders = setup
    bos = model.tokenizer.bos_token_id
    saes = {n: f for n, f in folders.items() if n != "tc"}
    capsys.readouterr()
    doc = _eval_cli(path, saes, real_corpus, tmp_path / "ev")
    assert doc["data"]["excluded_token_ids"] == [bos]
    assert "SAELens's run_evals default zeroes it" in capsys.readouterr().out  # the CE convention that differs
    for name, folder in saes.items():
        ours = doc["saes"][name]["metrics"]
        assert doc["saes"][name]["text"]["tokens"] == int((tokens != bos).sum())  # the same tokens
        theirs, features = _run_evals(folder, model, tokens, [bos])
        rq, sp, sh = theirs["reconstruction_quality"], theirs["sparsity"], theirs["shrinkage"]
        for key, want in (("explained_variance", rq["explained_variance"]), ("mse", rq["mse"]),
                          ("cossim", rq["cossim"]), ("l0", sp["l0"]), ("l1", sp["l1"]), ("l2_ratio", sh["l2_ratio"]),
                          ("relative_reconstruction_bias", sh["relative_reconstruction_bias"])):
            assert ours[key] == pytest.approx(want, rel=1e-4, abs=1e-5), (name, key)
        density = torch.tensor(features["feature_density"])
        assert ours["eval_dead_fraction"] == pytest.approx(float((density == 0).double().mean())), name
        assert ours["dense_fraction"] == pytest.approx(float((density > 0.1).double().mean())), name
        assert 0.05 < ours["explained_variance"] < 0.999 and ours["eval_dead_fraction"] > 0, name  # real figures


def test_ce_and_kl_equal_run_evals_with_every_position_spliced(setup, real_corpus, tmp_path, capsys) -> None:
    """`--exclude-bos false` is SAELens's exclude_special_tokens=False: CE clean / spliced / zero-ablated and
    CE loss recovered equal; KL equals run_evals's per-position values over the positions that predict a
    next token (SAELens's mean also counts the last position)."""
    from sae_lens import SAE as SaeLensSAE
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    model, path, tokens, folders = setup
    saes = {n: f for n, f in folders.items() if n != "tc"}
    capsys.readouterr()
    doc = _eval_cli(path, saes, real_corpus, tmp_path / "ev", "--exclude-bos", "false")
    assert doc["data"]["excluded_token_ids"] == []
    assert "run_evals default" not in capsys.readouterr().out  # SAELens's convention with every position spliced
    for name, folder in saes.items():
        ours = doc["saes"][name]["metrics"]
        perf = _run_evals(folder, model, tokens, False)[0]["model_performance_preservation"]
        for key, want in (("ce_loss_clean", perf["ce_loss_without_sae"]), ("ce_loss_spliced", perf["ce_loss_with_sae"]),
                          ("ce_loss_zero", perf["ce_loss_with_ablation"])):
            assert ours[key] == pytest.approx(want, rel=1e-5), (name, key)
        # a ratio of differences: float noise of the losses over the gap the zero-ablation makes
        noise = 1e-5 * ours["ce_loss_clean"] / abs(ours["ce_loss_zero"] - ours["ce_loss_clean"])
        assert ours["ce_loss_recovered"] == pytest.approx(perf["ce_loss_score"], abs=noise + 1e-5), name
        kl = get_recons_loss(SaeLensSAE.load_from_disk(folder), model, ActivationScaler(), tokens, compute_kl=True,
                             compute_ce_loss=False)["kl_div_with_sae"]
        assert ours["kl_div"] == pytest.approx(float(kl[:, :-1].mean()), rel=1e-3, abs=3e-8), name
        assert ours["kl_div"] > 0 and ours["ce_loss_zero"] != ours["ce_loss_clean"], name


def test_transcoder_against_saelens_forward(setup, real_corpus, tmp_path) -> None:
    """SAELens's run_evals has no transcoder case (it would compare the prediction with the input hook), so
    the reference is SAELens's Transcoder forward on the model's own hooks: EV / MSE of its prediction of
    the MLP output, and CE with it in place of the MLP (every position spliced), against the MLP ablated."""
    from sae_lens import SAE as SaeLensSAE
    from sae_lens.evals import ExplainedVarianceCalculator

    model, path, tokens, folders = setup
    doc = _eval_cli(path, {"tc": folders["tc"]}, real_corpus, tmp_path / "ev", "--exclude-bos", "false")
    ours = doc["saes"]["tc"]
    assert (ours["hook_name"], ours["hook_name_out"]) == (TC_IN, TC_OUT)
    tc = SaeLensSAE.load_from_disk(folders["tc"])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[TC_IN, TC_OUT])
        x, y = cache[TC_IN].flatten(0, 1), cache[TC_OUT].flatten(0, 1)
        pred = tc.decode(tc.encode(x))
        ev = ExplainedVarianceCalculator()
        ev.add_batch(pred, y)
        m = ours["metrics"]
        assert m["explained_variance"] == pytest.approx(ev.compute(), rel=1e-4)
        assert m["mse"] == pytest.approx(float((y - pred).pow(2).sum(-1).mean()), rel=1e-4)
        assert 0.01 < m["explained_variance"] < 0.999

        seen = {}

        def capture(act, hook):
            seen["x"] = act

        def splice(act, hook):
            return tc.decode(tc.encode(seen.pop("x"))).to(act.dtype)

        clean = float(model(tokens, return_type="loss"))
        spliced = float(model.run_with_hooks(tokens, return_type="loss",
                                             fwd_hooks=[(TC_IN, capture), (TC_OUT, splice)]))
        zero = float(model.run_with_hooks(tokens, return_type="loss",
                                          fwd_hooks=[(TC_OUT, lambda act, hook: torch.zeros_like(act))]))
    got = (m["ce_loss_clean"], m["ce_loss_spliced"], m["ce_loss_zero"])
    assert got == pytest.approx((clean, spliced, zero), rel=1e-4)
    assert m["ce_loss_recovered"] == pytest.approx((zero - spliced) / (zero - clean), rel=1e-3, abs=1e-4)
