"""`saesteer api`: the OpenAI-compatible steering API alone (no web pages)."""

from __future__ import annotations

NAME = "api"
ORDER = 61
HELP = "serve an OpenAI-compatible API (/v1/chat/completions, /v1/completions) that steers by feature id"
DESCRIPTION = """\
Serve /v1/models, /v1/completions and /v1/chat/completions in OpenAI's protocol, so the `openai`
client (and anything built on it) works unchanged, with steering as one extra request field:

  from openai import OpenAI
  client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="TOKEN")     # printed at start-up
  client.chat.completions.create(model="toy", messages=[{"role": "user", "content": "hello"}],
      extra_body={"steering": {"edits": [{"latent": 123, "op": "add", "value": 2, "unit": "max_act",
                                          "positions": "role:assistant"}],
                               "stop_when": ["77>1.5"]}})

Each --store is one "model" (its id from /v1/models): the SAE the edit ids refer to, the store
that resolves 'x' strengths and preset names ("steering": {"preset": "NAME"}), and the model that
generates. Edits: feature, op (add, clamp, scale, ablate), value, unit (raw | max_act), positions
(all, prompt, generated, last, token indices, role:NAME, turn:I), when (apply only where a latent
is above a threshold); or the CLI's text form "123:add=2x@generated?77>1". Streaming (SSE), n,
seed (choice i uses seed + i; without one, each choice draws a fresh seed, reported in its
steering.seed), stop, logprobs, top_logprobs, penalties, logit_bias; extensions top_k and
ignore_eos. Chat prompts use the tokenizer's chat template.

Concurrent requests are batched (continuous batching: requests with different edits share one
forward pass). At most --max-queued requests are in at once; more get 503 with Retry-After.
It listens on 127.0.0.1 only; binding elsewhere needs --allow-remote and a token (send it as
the api_key). `saesteer serve` serves the same API beside the web pages.

examples:
  saesteer api --store features/toy.db
  saesteer api --store a.db --store b.db --port 8080 --max-batch-rows 16
  SAESTEER_TOKEN=... saesteer api --store a.db --host 0.0.0.0 --allow-remote --allowed-hosts box.lan"""


def add_arguments(parser) -> None:
    from saesteer.commands.serve import add_arguments as serve_arguments

    serve_arguments(parser)


def run(args) -> int:
    from saesteer.commands.serve import run_server

    return run_server(args, pages=False)
