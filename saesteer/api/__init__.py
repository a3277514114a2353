"""The OpenAI-compatible steering API: /v1/models, /v1/completions, /v1/chat/completions.

    saesteer api --store toy.db                   # the API alone (saesteer serve includes it too)

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="<token, or anything on loopback>")
    client.chat.completions.create(model="toy", messages=[...],
                                   extra_body={"steering": {"edits": [{"latent": 123, "op": "add", "value": 2,
                                                                       "unit": "max_act"}]}})

Modules, one idea each: `protocol` (request shapes, the steering extension), `prepare` (request
-> engine rows: tokenizing, chat templates, edits / presets / stop triggers, bounds), `service`
(the served models: one per feature store, one batching scheduler per model), `scheduler` (the
worker thread: bounded queue, continuous batching with `steering.engine`), `responses` (OpenAI
bodies and SSE chunks), `routes` (the /v1 endpoints), `config` (batching settings). Security is
the web app's (`saesteer.web.security`): loopback by default, a token otherwise, bounded bodies.
"""
