"""A loopback OpenAI-compatible chat-completions server over a real local model.

What vLLM does, on the scale of a test: ``POST /v1/chat/completions`` renders ``messages``
with the tokenizer's chat template (``add_generation_prompt``, default true, and
``continue_final_message``, default false, as extra body fields: with the latter the
final assistant message is continued, not closed), tokenizes the text without adding
special tokens, runs one forward pass and answers the greedy next token with
``logprobs`` / ``top_logprobs`` (log-softmax over the whole vocabulary; token texts
decoded as vLLM shows them, so SmolLM2's "Ġ4" is " 4"). Only one token is ever generated
(judges ask for ``max_tokens=1``). ``GET /v1/models`` lists the one model.

``bodies`` keeps every request body; forward passes are serialized by a lock.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ModelServer:
    """Serve ``loaded`` (a ``transforms.models.LoadedModel``) as ``name`` on 127.0.0.1."""

    def __init__(self, loaded: Any, name: str = "smollm2") -> None:
        self.loaded, self.name = loaded, name
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._caches: dict[tuple[int, ...], Any] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/") == "/v1/models":
                    return outer.send(self, 200, {"object": "list", "data": [
                        {"id": outer.name, "object": "model", "created": 0, "owned_by": "test"}]})
                outer.send(self, 404, {"error": {"message": "not found", "type": "invalid_request_error"}})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return outer.send(self, 404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                with outer.lock:
                    outer.bodies.append(body)
                try:
                    payload = outer.complete(body)
                except ValueError as exc:  # what vLLM answers to a bad request
                    return outer.send(self, 400, {"error": {"message": str(exc), "type": "BadRequestError"}})
                outer.send(self, 200, payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def prompt_ids(self, body: dict[str, Any]) -> list[int]:
        """Token ids the model reads for a request (vLLM's chat rendering)."""
        tok = self.loaded.tokenizer
        messages = body["messages"]
        add_generation_prompt = body.get("add_generation_prompt", True)
        continue_final = body.get("continue_final_message", False)
        if continue_final and (add_generation_prompt or messages[-1]["role"] != "assistant"):
            raise ValueError("continue_final_message needs add_generation_prompt false and a final assistant message")
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                       continue_final_message=continue_final)
        return [int(i) for i in tok(text, add_special_tokens=False)["input_ids"]]

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        import torch

        if body.get("model") != self.name:
            raise ValueError(f"model {body.get('model')!r} not served (this server serves {self.name!r})")
        k = int(body.get("top_logprobs") or 0)
        if k > 20:
            raise ValueError("top_logprobs must be <= 20")
        ids = self.prompt_ids(body)
        with self.lock, torch.inference_mode():
            logits = self.forward(ids)
        logp = logits.float().log_softmax(-1)
        top_lp, top_ids = logp.topk(max(k, 1))
        tok = self.loaded.tokenizer

        def entry(i: int, lp: float) -> dict[str, Any]:
            text = tok.convert_tokens_to_string([tok.convert_ids_to_tokens(i)])
            return {"token": text, "logprob": lp, "bytes": list(text.encode())}

        first = entry(int(top_ids[0]), float(top_lp[0]))
        content = [{**first, "top_logprobs": [entry(int(i), float(lp)) for i, lp in zip(top_ids[:k], top_lp[:k])]}]
        return {
            "id": "chatcmpl-local", "object": "chat.completion", "created": 0, "model": self.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": first["token"]},
                         "logprobs": {"content": content} if body.get("logprobs") else None,
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1},
        }

    def forward(self, ids: list[int]) -> Any:
        """Last-position logits; reuses the KV cache of the longest earlier request that is a
        prefix (a judge walking digits sends the same prompt with a growing prefill), as
        vLLM's prefix caching does. Call under ``lock``."""
        import copy

        import torch

        base = max((k for k in self._caches if len(k) < len(ids) and tuple(ids[:len(k)]) == k), key=len, default=())
        cache = copy.deepcopy(self._caches[base]) if base else None
        out = self.loaded.model(input_ids=torch.tensor([ids[len(base):]]), past_key_values=cache, use_cache=True,
                                logits_to_keep=1)
        if len(self._caches) >= 64:
            self._caches.pop(next(iter(self._caches)))
        self._caches[tuple(ids)] = out.past_key_values
        return out.logits[0, -1]

    @staticmethod
    def send(handler: BaseHTTPRequestHandler, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        try:
            handler.send_response(code)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
