"""Where an OpenAI-compatible API lives: the judge's base URL, the query it carries (Azure's
`api-version`), Azure OpenAI deployment URLs, and what a 404 under a base URL most likely means."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import parse_qsl, urlsplit, urlunsplit


@dataclass(frozen=True)
class BaseURL:
    url: str | None  # without its query (None: the client's default, OpenAI's)
    query: dict[str, str] = field(default_factory=dict)  # sent with every request
    azure_deployment: bool = False  # .../openai/deployments/NAME: Azure's api-key header and api-version


def parse_base_url(url: str | None, env: Mapping[str, str] | None = None) -> BaseURL:
    """The base URL split from its query (the client would glue the request's path after the
    query); an Azure deployment URL without `?api-version=` takes $OPENAI_API_VERSION or is refused."""
    if url is None:
        return BaseURL(None)
    parts = urlsplit(url)
    if parts.path.rstrip("/").endswith("/chat/completions"):
        raise ValueError(f"the judge's base URL {url} ends in /chat/completions: give the API's base URL without it "
                         "(e.g. http://localhost:8000/v1)")
    query = dict(parse_qsl(parts.query))
    azure = "/openai/deployments/" in parts.path
    if azure and "api-version" not in query:
        version = (os.environ if env is None else env).get("OPENAI_API_VERSION")
        if not version:
            raise ValueError(
                "an Azure OpenAI deployment URL needs an API version: end the base URL with ?api-version=2024-10-21 "
                "(or set OPENAI_API_VERSION), or use the v1 endpoint https://RESOURCE.openai.azure.com/openai/v1")
        query["api-version"] = version
    return BaseURL(urlunsplit(parts._replace(query="", fragment="")), query, azure)


def not_found_hint(base: BaseURL) -> str:
    """Where a 404 most likely comes from: a base URL without the API's /v1 ("" if its path has a
    version segment anywhere, as Gemini's .../v1beta/openai does, or it is Azure's or OpenAI's default)."""
    if base.url is None or base.azure_deployment or re.search(r"/v\d+(beta\d*)?(/|$)", urlsplit(base.url).path):
        return ""
    return (f" (no chat completions under {base.url}: OpenAI-compatible servers serve them under /v1, "
            f"e.g. {base.url.rstrip('/')}/v1 for Ollama, vLLM, llama.cpp, LM Studio)")
