"""One small interface over the two standard clients: `openai` (OpenAI and every OpenAI-compatible
endpoint: a local vLLM or Ollama server, a gateway) and `anthropic` (Claude).

`LLM.complete(system, user)` returns the text with the call's token usage and cost. Rate limits (429),
timeouts, dropped connections and server errors are retried with exponential backoff (the server's
Retry-After is honoured); anything else, a refused key included, is an `LLMError` at once. The clients'
own retries are off, so every attempt is counted here.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field

from ..errors import FibmoeError

PROVIDERS = ("openai", "anthropic")
KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
DEFAULT_MODEL = {"openai": "gpt-4.1", "anthropic": "claude-sonnet-4-6"}
# List prices in USD per million (input, output) tokens, as published when this was written; `--price`
# overrides them, and an unknown model's cost is reported as unknown rather than guessed.
PRICES = {
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4o": (2.50, 10.00),
    "o3": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "claude-opus-4-1": (15.00, 75.00),
    "claude-sonnet-4-6": (3.00, 15.00),  # Sonnet's list price since 3.5, assumed unchanged
    "claude-sonnet-4-5": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-haiku-4-5": (1.00, 5.00),
}


class LLMError(FibmoeError):
    """The model could not be reached or refused the request; the message says why in one line.
    `fatal`: no later call can succeed either (no key, a refused key, an unknown model)."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    calls: int = 0
    retries: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd
        self.calls += other.calls
        self.retries += other.retries

    def to_dict(self) -> dict:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
            "calls": self.calls,
            "retries": self.retries,
        }

    @classmethod
    def from_dict(cls, d: dict | None) -> Usage:
        d = d or {}
        return cls(**{k: d[k] for k in ("input_tokens", "output_tokens", "cost_usd", "calls", "retries") if k in d})


@dataclass
class Reply:
    text: str
    usage: Usage
    seconds: float


@dataclass
class LLMConfig:
    provider: str = "openai"
    model: str = ""
    base_url: str | None = None
    api_key_env: str = ""  # default: OPENAI_API_KEY or ANTHROPIC_API_KEY
    max_tokens: int = 16000
    temperature: float | None = None
    timeout_s: float = 600.0
    retries: int = 5
    backoff_s: float = 2.0  # first wait; doubles each retry, capped at 60 s
    price: tuple[float, float] | None = None  # USD per million (input, output) tokens
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.provider not in PROVIDERS:
            raise LLMError(f"unknown provider {self.provider!r} (choose from {', '.join(PROVIDERS)})")
        self.model = self.model or DEFAULT_MODEL[self.provider]
        self.api_key_env = self.api_key_env or KEY_ENV[self.provider]

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> LLMConfig:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if d.get("price") is not None:
            d["price"] = tuple(d["price"])
        return cls(**d)

    def cost(self, input_tokens: int, output_tokens: int) -> float | None:
        price = self.price or PRICES.get(self.model)
        if price is None:
            return None
        return (input_tokens * price[0] + output_tokens * price[1]) / 1e6


class LLM:
    def __init__(self, config: LLMConfig, sleep=time.sleep):
        self.config = config
        self.sleep = sleep
        self._client = None

    def _key(self) -> str:
        key = os.environ.get(self.config.api_key_env)
        if key:
            return key
        if self.config.base_url:  # a local server (vLLM, Ollama) takes any key
            return "unused"
        raise LLMError(
            f"set {self.config.api_key_env} to the API key for {self.config.provider} (or pass --base-url)", fatal=True
        )

    def check_ready(self) -> None:
        """Raise the one-line LLMError now if no call could be made (no key), before a run starts."""
        self._key()

    def client(self):
        if self._client is None:
            c = self.config
            if c.provider == "openai":
                import openai

                self._client = openai.OpenAI(
                    api_key=self._key(), base_url=c.base_url, timeout=c.timeout_s, max_retries=0
                )
            else:
                import anthropic

                self._client = anthropic.Anthropic(
                    api_key=self._key(), base_url=c.base_url, timeout=c.timeout_s, max_retries=0
                )
        return self._client

    def complete(self, system: str, user: str) -> Reply:
        start = time.monotonic()
        retries = 0
        while True:
            try:
                text, tin, tout = self._call(system, user)
                break
            except Exception as e:  # noqa: BLE001 - sorted into retryable or not below
                wait = self._retry_wait(e, retries)
                if wait is None:
                    fatal = getattr(e, "status_code", None) in (401, 403, 404)
                    raise LLMError(f"{self.config.provider} {self.config.model}: {_describe(e)}", fatal) from None
                retries += 1
                self.sleep(wait)
        usage = Usage(tin, tout, self.config.cost(tin, tout), calls=1, retries=retries)
        return Reply(text=text, usage=usage, seconds=round(time.monotonic() - start, 2))

    def _call(self, system: str, user: str) -> tuple[str, int, int]:
        c = self.config
        if c.provider == "openai":
            kwargs = dict(
                model=c.model, messages=[{"role": "system", "content": system}, {"role": "user", "content": user}]
            )
            # OpenAI's own API wants max_completion_tokens (its reasoning models refuse max_tokens); compatible
            # servers (vLLM, Ollama, gateways) take max_tokens.
            kwargs["max_completion_tokens" if not c.base_url else "max_tokens"] = c.max_tokens
            if c.temperature is not None:
                kwargs["temperature"] = c.temperature
            r = self.client().chat.completions.create(**kwargs, **c.extra)
            if not getattr(r, "choices", None):
                got = f"{type(r).__name__}: {str(r)[:80]}"
                raise LLMError(f"the endpoint's answer is not a chat completion (got {got})")
            text = r.choices[0].message.content or ""
            u = r.usage
            return text, int(getattr(u, "prompt_tokens", 0) or 0), int(getattr(u, "completion_tokens", 0) or 0)
        kwargs = dict(
            model=c.model, max_tokens=c.max_tokens, system=system, messages=[{"role": "user", "content": user}]
        )
        if c.temperature is not None:
            kwargs["temperature"] = c.temperature
        r = self.client().messages.create(**kwargs, **c.extra)
        text = "".join(getattr(b, "text", "") for b in (r.content or []) if getattr(b, "type", "") == "text")
        u = r.usage
        return text, int(getattr(u, "input_tokens", 0) or 0), int(getattr(u, "output_tokens", 0) or 0)

    def _retry_wait(self, e: Exception, retries: int) -> float | None:
        """Seconds to wait before the next attempt, or None when this error is not worth retrying."""
        if retries >= self.config.retries or not _retryable(e):
            return None
        response = getattr(e, "response", None)
        after = _retry_after(response.headers) if response is not None else None
        if after is not None:
            return min(after, 120.0)
        return min(self.config.backoff_s * 2**retries, 60.0) * (0.5 + random.random() / 2)


def _retryable(e: Exception) -> bool:
    import importlib

    for name in PROVIDERS:  # only the client in use need be installed (the GPU machines carry openai alone)
        try:
            sdk = importlib.import_module(name)
        except ImportError:
            continue
        if isinstance(e, sdk.APIConnectionError):  # timeouts included
            return True
        if isinstance(e, sdk.APIStatusError):
            return e.status_code in (408, 409, 429) or e.status_code >= 500
    return False


def _retry_after(headers) -> float | None:
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def _describe(e: Exception) -> str:
    status = getattr(e, "status_code", None)
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if status in (401, 403):
        return f"the endpoint refused the key (HTTP {status}): {msg}"
    return f"{type(e).__name__}{f' (HTTP {status})' if status else ''}: {msg}"[:500]


def parse_price(text: str | None) -> tuple[float, float] | None:
    """'IN,OUT' in USD per million tokens (e.g. '3,15'), or None."""
    if not text:
        return None
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError:
        raise FibmoeError(f"--price {text!r}: give USD per million input and output tokens, e.g. 3,15") from None
    return (a, b)
