"""A minimal OpenAI-compatible chat-completions client (stdlib only).

Shared by the NaturalScore judge and the prompt refiner. It speaks the wire protocol that OpenAI, vLLM,
SGLang, LM Studio and most hosted gateways accept (``POST {endpoint}/chat/completions``), so no SDK is
needed. Transient failures (HTTP 5xx and 429, connection errors, timeouts) are retried with exponential
backoff a bounded number of times; anything else (a 4xx, a malformed answer) fails at once, because
retrying cannot fix it.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

__all__ = ["ChatClient", "ChatEndpointError", "image_data_url", "image_part", "text_part"]


class ChatEndpointError(ConnectionError):
    """The chat endpoint failed (after any retries) or returned something that is not a chat answer."""


def _encode_image(image: Image.Image | np.ndarray, fmt: str, quality: int) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    image = image.convert("RGB")
    buffer = io.BytesIO()
    if fmt.upper() == "JPEG":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format=fmt.upper())
    return buffer.getvalue()


def image_data_url(image: Image.Image | np.ndarray, fmt: str = "JPEG", quality: int = 95) -> str:
    """A ``data:image/...;base64,`` URL of an RGB image (PIL image or ``(H, W, 3)`` uint8 array)."""
    mime = "jpeg" if fmt.upper() in ("JPEG", "JPG") else fmt.lower()
    payload = base64.b64encode(_encode_image(image, fmt, quality)).decode("ascii")
    return f"data:image/{mime};base64,{payload}"


def image_part(image: Image.Image | np.ndarray, fmt: str = "JPEG", quality: int = 95) -> dict[str, Any]:
    """A chat message content part carrying ``image`` as a data URL."""
    return {"type": "image_url", "image_url": {"url": image_data_url(image, fmt, quality)}}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class ChatClient:
    """POST chat completions to an OpenAI-compatible endpoint with bounded retries.

    Args:
        endpoint: base URL, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``;
            ``/chat/completions`` is appended.
        model: the model name sent with every request.
        api_key_env: name of the environment variable holding the API key (read at each request, never
            stored or logged). If it is unset, no ``Authorization`` header is sent (local servers).
        timeout: seconds per request (connect + read).
        retries: extra attempts after the first on transient failures (so ``retries + 1`` requests at most).
        backoff: first wait in seconds; doubles per retry, capped at ``max_backoff``.
    """

    def __init__(
        self,
        endpoint: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 2.0,
        max_backoff: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not endpoint or not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"chat endpoint must be an http(s) URL, got {endpoint!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._warned_no_key = False

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif self.api_key_env and not self._warned_no_key:
            log.warning(
                "environment variable %s is not set: calling %s without an API key",
                self.api_key_env,
                self.url,
            )
            self._warned_no_key = True
        return headers

    def _post_once(self, body: bytes) -> dict[str, Any]:
        request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            raw = response.read()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ChatEndpointError(f"{self.url} returned a non-JSON body: {raw[:200]!r}") from exc

    def request(self, messages: Sequence[dict[str, Any]], **params: Any) -> dict[str, Any]:
        """Send one chat-completions request (with retries); returns the decoded JSON response."""
        body = json.dumps({"model": self.model, "messages": list(messages), **params}).encode("utf-8")
        attempts = self.retries + 1
        last_error: BaseException | None = None
        for attempt in range(attempts):
            try:
                return self._post_once(body)
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace") if exc.fp is not None else ""
                if exc.code not in _RETRYABLE_STATUS:
                    raise ChatEndpointError(f"{self.url} answered HTTP {exc.code}: {detail}") from exc
                last_error = exc
                reason = f"HTTP {exc.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                last_error = exc
                reason = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            if attempt + 1 < attempts:
                wait = min(self.backoff * (2**attempt), self.max_backoff)
                log.warning(
                    "chat request to %s failed (%s); retry %d/%d in %.1fs",
                    self.url,
                    reason,
                    attempt + 1,
                    self.retries,
                    wait,
                )
                self._sleep(wait)
        raise ChatEndpointError(
            f"{self.url} failed after {attempts} attempt(s); last error: {last_error}"
        ) from last_error

    def complete(self, messages: Sequence[dict[str, Any]], **params: Any) -> str:
        """Send a request and return the text of the first choice."""
        response = self.request(messages, **params)
        try:
            content = response["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise ChatEndpointError(
                f"{self.url}: response has no choices[0].message.content: {json.dumps(response)[:300]}"
            ) from exc
        if content is None:
            return ""
        if isinstance(content, list):  # some servers return content parts
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise ChatEndpointError(f"{self.url}: message content is {type(content).__name__}, not text")
        return content
