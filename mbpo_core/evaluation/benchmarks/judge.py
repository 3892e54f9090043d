"""A judge model the user runs, behind an OpenAI-compatible chat completions route (OpenAI, vLLM,
an Ollama or LiteLLM proxy, ...): a prompt in, the reply text out. Benchmarks scored by a judge
(mmhal.py) take any `Judge` callable; this module is the one that speaks HTTP.

Guarantees: each request has a timeout (connect and read, `timeout_s`); a connection error, a
timeout, 429 or a 5xx is retried up to `attempts` times in all with exponential back-off, any other
HTTP error fails at once; a failure is a `JudgeError` naming the URL and the status, never the API
key (it is sent only in the Authorization header, kept out of the object's repr and removed from
any error text that echoes it). The request is the reference scripts' request: one user message,
temperature 0.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

Judge = Callable[[str], str]
RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
CHAT_ROUTE = "/chat/completions"


class JudgeError(RuntimeError):
    """The judge could not be reached or gave no usable reply."""


def chat_url(url: str) -> str:
    """`url` as given when it names the chat completions route, else that route under it
    (`http://host:8000/v1` -> `http://host:8000/v1/chat/completions`)."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"judge URL must start with http:// or https://, got {url!r}")
    return url if url.endswith(CHAT_ROUTE) else f"{url}{CHAT_ROUTE}"


def api_key_from_env(name: str | None, default: str = "OPENAI_API_KEY") -> str | None:
    """The key in environment variable `name` (which must be set), or in `default` when it is set;
    None when no key is configured (a local server needs none)."""
    if name is not None:
        value = os.environ.get(name)
        if not value:
            raise ValueError(f"environment variable {name} (the judge's API key) is not set")
        return value
    return os.environ.get(default) or None


@dataclass(frozen=True)
class ChatJudge:
    """Calls `model` at the chat completions route `url` (see `chat_url`)."""

    url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 120.0
    attempts: int = 4
    backoff_s: float = 2.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", chat_url(self.url))
        if not self.model:
            raise ValueError("the judge model name is empty")
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def __call__(self, prompt: str) -> str:
        payload = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0.0}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        problem = ""
        with httpx.Client(timeout=self.timeout_s) as client:
            for attempt in range(self.attempts):
                if attempt:
                    self.sleep(self.backoff_s * 2 ** (attempt - 1))
                try:
                    response = client.post(self.url, json=payload, headers=headers)
                except httpx.TransportError as error:  # connection refused, timeouts, ...
                    problem = f"{type(error).__name__}: {self._redact(str(error))}"
                    continue
                if response.status_code in RETRIED_STATUSES:
                    problem = f"HTTP {response.status_code}"
                    continue
                if response.is_error:
                    raise JudgeError(
                        f"judge {self.url} answered HTTP {response.status_code}: "
                        f"{self._redact(response.text[:300])}"
                    )
                return self._content(response)
        raise JudgeError(f"judge {self.url} failed {self.attempts} times; last: {problem}")

    def _content(self, response: httpx.Response) -> str:
        try:
            body: Any = response.json()
            content = body["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise JudgeError(f"judge {self.url} sent no chat completion ({type(error).__name__})") from error
        if not isinstance(content, str):
            raise JudgeError(f"judge {self.url} sent a message without text content")
        return content

    def _redact(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text
