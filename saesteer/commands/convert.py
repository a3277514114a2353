"""`saesteer convert`: an SAE from any source written for another library (`saes.formats.export`)."""

from __future__ import annotations

NAME = "convert"
ORDER = 37
HELP = "write an SAE (any format saesteer reads) for another library: SAELens, sparsify, dictionary_learning"
DESCRIPTION = """\
Write an SAE for colleagues who use another library. SAE is anything --sae takes: a folder (saesteer,
SAELens, sparsify hookpoint, dictionary_learning, Gemma Scope), an OpenAI .pt file, sae_lens:RELEASE/SAE_ID
or a Neuronpedia id. The output loads with that library's own loader and gives the same latents and
reconstruction:

  saesteer             cfg.json + sae_weights.safetensors + saesteer.json (provenance, local paths cut)
  saelens              cfg.json + sae_weights.safetensors       sae_lens.SAE.load_from_disk(OUT)
  sparsify             OUT/HOOKPOINT/cfg.json + sae.safetensors sparsify.SparseCoder.load_many(OUT)
  dictionary_learning  OUT/ae.pt + config.json                  dictionary_learning.utils.load_dictionary(OUT, dev)

What a library cannot compute is refused, naming both sides (sparsify computes TopK only;
dictionary_learning reads a block's residual stream, MLP or attention output). dictionary_learning gets
BatchTopK and Matryoshka as its BatchTopKSAE and MatryoshkaBatchTopKSAE where every latent has one
threshold, else (per-latent thresholds, as saesteer trains them) as its JumpReluAutoEncoder, which computes
them exactly. Neuronpedia takes the weights as a SAELens folder and the dashboards from a feature store
(`saesteer features export STORE OUT --format neuronpedia`). OUT is written whole or not at all (built
beside under a temporary name, then renamed; what a killed run left is cleaned up by the next). A sparsify
run folder at OUT takes one more hookpoint (another layer's SAE), its other hookpoints kept.

examples:
  saesteer convert runs/toy/saes/topk_k32_f1024 --to sparsify --out share/sparsify
  saesteer convert sae_lens:gpt2-small-res-jb/blocks.8.hook_resid_pre --to dictionary_learning --out share/dl
  saesteer convert ckpts/run/layers.6 --to saelens --out share/saelens --overwrite"""


def add_arguments(parser) -> None:
    from saes.export_targets import TARGETS

    parser.add_argument("sae", metavar="SAE",
                        help="the SAE: a folder or file saesteer reads, sae_lens:RELEASE/SAE_ID, or a Neuronpedia id")
    parser.add_argument("--to", required=True, type=_target, choices=list(TARGETS),
                        help="the library to write it for")
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write (must not exist, unless "
                                                                    "--overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an SAE folder already at --out (a folder holding anything else is refused); "
                             "sparsify: replace the hookpoint in the run at --out")
    parser.add_argument("--hook", default=None,
                        help="hook point of an SAE whose files do not record one (e.g. blocks.6.hook_resid_post)")
    parser.add_argument("--model", default=None, help="model of an SAE whose files do not record one")
    parser.add_argument("--hookpoint", default=None, metavar="MODULE",
                        help="sparsify: the HF module the SAE reads the output of, its name in the run (default: "
                             "the SAE's model's own name, from its config or family: layers.N for "
                             "blocks.N.hook_resid_post and layers.N.mlp for hook_mlp_out on most models, h.N and "
                             "h.N.mlp on GPT-2, Falcon, Bloom)")


def _target(text: str) -> str:
    """--to's value; "neuronpedia", which users ask for but is no target, answered with what to do instead
    (argparse prints the message after "argument --to:")."""
    import argparse

    from saes.export_targets import NO_NEURONPEDIA

    if text.strip().lower() == "neuronpedia":
        raise argparse.ArgumentTypeError(NO_NEURONPEDIA)
    return text


def run(args) -> int:
    from saes.formats import resolve_sae
    from saes.formats.export import export_sae

    if args.hookpoint and args.to != "sparsify":
        raise ValueError(f"--hookpoint names a sparsify hookpoint; --to {args.to} has none: drop it")
    _refuse_out_holding_the_source(args.sae, args.out)
    try:
        loaded = resolve_sae(args.sae, hook=args.hook, model=args.model, device="cpu")
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"cannot load SAE {args.sae}: {e}") from None
    done = export_sae(loaded.sae, args.to, args.out, provenance=loaded.provenance, overwrite=args.overwrite,
                      hookpoint=args.hookpoint)
    print(f"wrote {done.path}: {done.what}")
    print(f"load it with {done.load_with}")
    return 0


def _refuse_out_holding_the_source(sae: str, out: str) -> None:
    """--out that is the SAE's own folder (or holds it): --overwrite would replace the original, and with it
    what its folder holds beside the weights (checkpoints, the run's other hookpoints)."""
    from pathlib import Path

    src, dest = Path(sae).expanduser(), Path(out).expanduser()
    if not src.exists() or not dest.exists():
        return
    src, dest = src.resolve(), dest.resolve()
    if dest == src or dest in src.parents:
        raise ValueError(f"--out {out} holds the SAE being converted ({sae}); write the copy to another folder")
