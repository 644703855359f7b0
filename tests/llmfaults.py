"""A fake OpenAI-compatible LLM server for fault injection, shared by the explain, crash and
concurrency tests.

It is only ever the *LLM endpoint* (a remote service we do not control); the subject model, the
database and the pipeline under test are real. Modes:

* whole-request faults (every POST): ``500``, ``429``, ``hang`` (3 s, then 500), ``garbage`` (a 200
  whose body is not JSON), ``html`` (a 200 with an HTML page, as a proxy sends for a dead server),
  ``out-of-range`` (``{"activations": [42]}``), ``empty`` (an empty reply);
* simulation faults (explanation requests are answered well, so the failure lands on the score):
  ``truncated`` (cut at ``max_tokens``: half a JSON object / half the prompt's logprobs,
  ``finish_reason: "length"``), ``wrong-count`` (one value fewer than there are tokens),
  ``not-json`` (chatty prose where JSON was asked for);
* detection questions (the detection scorer's requests, whose last message starts
  ``Neuron description: ...``) are simulations too: the well-behaved modes answer Yes when a word of
  the description is a word of the text, No otherwise (a keyword stand-in, never the LLM's
  quality); the simulation faults answer neither;
* rule compilations (the ``rule`` simulator's requests, whose last message is ``Description: ...``)
  are simulations too: ``ok`` and ``keyword`` answer ``{"words": [...]}`` with the description's
  words, ``truncated`` cuts that object at ``max_tokens``, ``wrong-count`` answers a regular
  expression that does not compile, ``not-json`` answers prose;
* ``truncated-explanation``: the explanation is cut at ``max_tokens`` inside its phrase (simulations
  answered well);
* ``no-digits``: echo simulations whose top logprobs hold no digit at any position (the simulator
  "answered" but not on the 0-9 scale); explanations answered well;
* ``keyword``: a deterministic stand-in simulator for testing what is computed *from* simulations
  (controls, summaries), never the simulator's quality: echo prompts get a '9' at every slot whose
  token (lower case, space stripped) is a word of the target explanation, '0' elsewhere;
* ``candidates``: like ``keyword``, but an explanation request is answered with one of the tokens
  the prompt says the neuron fires on most - the first at temperature 0, the ``seed``-th (cycling)
  when a seed is given - so best-of-n candidates differ and score differently;
* ``reviser``: explanations answered well (" tokens that matter."); a feedback round's request is
  answered with the tokens its feedback lists as misses, as a reviser that reads the feedback
  would; ``stubborn``: the same, but a revision repeats the explanation it was asked to revise;
* ``copycat``: an explanation request is answered with the prompt's first few-shot answer at
  temperature 0, and well when asked again hotter; simulations are answered well;
* ``ok``: well-formed answers (an explanation for chat, a ``5`` logprob at every character for echo
  prompts, a valid JSON list for JSON simulations), so a test can watch a failure get redone;
* hostile endpoints: ``trickle`` (a 200's headers, then one byte every ``trickle_seconds`` for up
  to ``trickle_for`` seconds: every read is quick, the answer never whole), ``endless`` (a 200
  whose body never ends: bytes as fast as the client takes them, up to 256 MB), ``gzip-bomb``
  (a 200 KB gzip body that expands to 200 MB), ``dead`` (500 for every request, ``/models`` too:
  a server that is up and never works).

``GET /models`` answers well in every mode but ``dead``, unless ``models_mode`` is ``trickle``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SIMULATION_FAULTS = ("truncated", "wrong-count", "not-json")
ENDLESS_LIMIT = 256 << 20  # an "endless" body stops here, so a client without a cap cannot eat RAM
BOMB_BYTES = 200 << 20  # what the gzip bomb expands to
_bomb: list[bytes] = []
_bomb_lock = threading.Lock()


def gzip_bomb() -> bytes:
    """A gzip stream of :data:`BOMB_BYTES` spaces (about 200 KB), made once."""
    with _bomb_lock:
        if not _bomb:
            packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
            block = b" " * (1 << 20)
            parts = [packer.compress(block) for _ in range(BOMB_BYTES >> 20)]
            _bomb.append(b"".join(parts) + packer.flush())
        return _bomb[0]


class FaultServer:
    """A local HTTP server that misbehaves on purpose (see the module docstring); ``mode`` may
    change any time."""

    def __init__(self, mode: str):
        self.mode = mode
        self.models_mode = "ok"  # or "trickle": what GET /models does (unless mode is "dead")
        self.trickle_seconds = 0.5
        self.trickle_for = 120.0  # seconds a trickle lasts at most (then the connection closes)
        self.closing = False
        self.requests = 0
        #: every request's JSON body, in arrival order (what the client actually sent)
        self.bodies: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # /v1/models
                if server.mode == "dead":
                    self._send(500, {"error": {"message": "boom"}})
                elif server.models_mode == "trickle":
                    self._trickle()
                else:
                    self._send(
                        200, {"data": [{"id": "fault-model", "object": "model"}], "object": "list"}
                    )

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                server.requests += 1
                server.bodies.append(body)
                mode = server.mode
                if mode in ("500", "dead"):
                    self._send(500, {"error": {"message": "boom"}})
                elif mode == "trickle":
                    self._trickle()
                elif mode == "endless":
                    self._endless()
                elif mode == "gzip-bomb":
                    self._raw(200, gzip_bomb(), encoding="gzip")
                elif mode == "429":
                    self._send(429, {"error": {"message": "slow down"}})
                elif mode == "hang":
                    time.sleep(3)
                    self._send(500, {"error": {"message": "too late"}})
                elif mode == "garbage":
                    self._raw(200, b"{not json")
                elif mode == "html":
                    page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
                    self._raw(200, page, "text/html")
                elif mode == "out-of-range":
                    self._send(200, _chat('{"activations": [42]}'))
                elif mode == "truncated-explanation" and not is_simulation(body):
                    self._send(
                        200, _chat(" tokens that", finish_reason="length")
                    )  # cut inside the phrase
                elif mode == "copycat" and not is_simulation(body) and not body.get("seed"):
                    self._send(200, _chat(body["messages"][2]["content"]))
                elif mode == "candidates" and not is_simulation(body):
                    self._send(200, _candidate_answer(body))
                elif mode in ("reviser", "stubborn") and is_revision(body):
                    self._send(200, _revision_answer(body, follow=mode == "reviser"))
                elif mode in ("no-digits", "keyword", "candidates") and "prompt" in body:
                    self._send(200, _echo_digits(body["prompt"], keyword=mode != "no-digits"))
                elif mode in (
                    "ok",
                    "truncated-explanation",
                    "no-digits",
                    "keyword",
                    "candidates",
                    "copycat",
                    "reviser",
                    "stubborn",
                ) or (mode in SIMULATION_FAULTS and not is_simulation(body)):
                    self._send(200, ok_answer(body))
                elif mode in SIMULATION_FAULTS:
                    self._send(200, _simulation_fault(mode, body))
                else:
                    self._send(200, _chat(""))  # empty explanation / no logprobs: invalid

            def _send(self, status: int, obj: dict[str, Any]) -> None:
                self._raw(status, json.dumps(obj).encode())

            def _raw(
                self,
                status: int,
                data: bytes,
                content_type: str = "application/json",
                encoding: str | None = None,
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                if encoding:
                    self.send_header("Content-Encoding", encoding)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _trickle(self) -> None:
                """Headers at once, then the body a byte at a time, never all of it."""
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                until = time.monotonic() + server.trickle_for
                try:
                    while not server.closing and time.monotonic() < until:
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(server.trickle_seconds)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up

            def _endless(self) -> None:
                """A body with no length that does not end (until ENDLESS_LIMIT)."""
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Connection", "close")
                self.end_headers()
                chunk = b" " * (64 << 10)
                try:
                    for _ in range(ENDLESS_LIMIT // len(chunk)):
                        if server.closing:
                            break
                        self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closing = True
        self.httpd.shutdown()
        self.httpd.server_close()


def is_simulation(body: dict[str, Any]) -> bool:
    """Echo prompts and chat simulations (their last message lists the tokens); explanation
    requests are neither."""
    if "prompt" in body:
        return True
    messages = body.get("messages") or []
    return bool(messages) and (
        "Tokens (" in str(messages[-1].get("content", ""))
        or is_rule_request(body)
        or is_detection(body)
    )


def is_detection(body: dict[str, Any]) -> bool:
    """A detection scorer's question: does the text contain what the description names?"""
    messages = body.get("messages") or []
    return bool(messages) and str(messages[-1].get("content", "")).startswith(
        "Neuron description: "
    )


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _detection_answer(body: dict[str, Any]) -> dict[str, Any]:
    """Yes when a word of the description is a word of the text (both lower case), else No."""
    found = re.match(
        r"Neuron description: (.*)\nText: (.*)\nDoes", body["messages"][-1]["content"], re.S
    )
    if found and _words(found.group(1)) & _words(found.group(2)):
        return _chat("Yes")
    return _chat("No")


def is_rule_request(body: dict[str, Any]) -> bool:
    """A ``rule`` simulator's request: compile the description in the last message into a rule."""
    messages = body.get("messages") or []
    return bool(messages) and str(messages[-1].get("content", "")).startswith("Description: ")


def _description_rule(body: dict[str, Any]) -> str:
    """The rule a keyword matcher would write: every space-separated word of the description."""
    description = str(body["messages"][-1]["content"]).removeprefix("Description: ").lower()
    return json.dumps({"words": sorted(set(description.split()))})


def _n_tokens(body: dict[str, Any]) -> int:
    """How many values a chat simulation asks for (its last message says ``Tokens (N):``)."""
    found = re.search(r"Tokens \((\d+)\)", str(body["messages"][-1]["content"]))
    return int(found.group(1)) if found else 1


def _chat(content: str, finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "fault-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }


def _echo(prompt: str, upto: int | None = None) -> dict[str, Any]:
    """Prompt logprobs with a '5' as the likeliest next digit everywhere, one character per token
    (the first ``upto`` characters only: a truncated answer)."""
    chars = list(prompt[:upto] if upto is not None else prompt)
    top = [None] + [{"5": -0.1, "x": -3.0} for _ in chars[1:]]
    return {
        "id": "x",
        "object": "text_completion",
        "created": 0,
        "model": "fault-model",
        "choices": [
            {
                "index": 0,
                "text": "".join(chars),
                "finish_reason": "length",
                "logprobs": {
                    "tokens": chars,
                    "text_offset": list(range(len(chars))),
                    "token_logprobs": [None] * len(chars),
                    "top_logprobs": top,
                },
            }
        ],
        "usage": {
            "prompt_tokens": len(prompt),
            "completion_tokens": 0,
            "total_tokens": len(prompt),
        },
    }


def _echo_digits(prompt: str, keyword: bool) -> dict[str, Any]:
    """Echo logprobs, one character per token: no digit anywhere (``keyword=False``), or a 9/0 at
    each activation slot of the target record by whether its token is a word of the target
    explanation."""
    response = _echo(prompt)
    tops = response["choices"][0]["logprobs"]["top_logprobs"]
    for i in range(1, len(tops)):
        tops[i] = {"?": -0.05, "x": -3.0}
    if keyword:
        head, _, target = prompt.rpartition("<start>\n")
        explanation = head.rsplit("behavior:", 1)[-1].lower().split("find", 1)[-1]
        words = set(re.findall(r"\w+", explanation))
        offset = len(head) + len("<start>\n")
        for line in target.split("\n"):
            token, tab, _ = line.partition("\t")
            if tab:
                slot = offset + len(token) + 1
                tops[slot] = {"9" if token.strip().lower() in words else "0": -0.05, "x": -3.0}
            offset += len(line) + 1
    return response


def is_revision(body: dict[str, Any]) -> bool:
    """A feedback round's request: revise the explanation in its last message."""
    messages = body.get("messages") or []
    return bool(messages) and str(messages[-1].get("content", "")).startswith("Explanation: ")


def _revision_answer(body: dict[str, Any], follow: bool) -> dict[str, Any]:
    """``follow``: the tokens the feedback lists as misses, which is what a reviser that reads
    the feedback writes; else the explanation it was asked to revise, word for word."""
    content = str(body["messages"][-1]["content"])
    if not follow:
        return _chat(content.splitlines()[0].removeprefix("Explanation: "))
    misses = content.split("Misses", 1)[1].split("\n\n", 1)[0] if "Misses" in content else ""
    tokens = re.findall(r'^"([^"]+)" \d+ times?', misses, flags=re.M)
    return _chat(" " + " ".join(tokens) if tokens else " tokens that matter more.")


def _candidate_answer(body: dict[str, Any]) -> dict[str, Any]:
    """An explanation naming one of the prompt's most-firing tokens, picked by the request's
    seed."""
    found = re.search(r"The tokens it fires on most: (.*)\.\n", body["messages"][-1]["content"])
    tokens = re.findall(r'"([^"]+)"', found.group(1)) if found else []
    if not tokens:
        return _chat(" tokens that matter.")
    return _chat(f" {tokens[int(body.get('seed') or 0) % len(tokens)]}.")


def ok_answer(body: dict[str, Any]) -> dict[str, Any]:
    """A well-formed answer: an explanation for chat, one-character tokens with a '5' logprob for
    echo prompts, ``{"activations": [5, ...]}`` of the right length for JSON simulations."""
    if "messages" in body:
        if is_rule_request(body):
            return _chat(_description_rule(body))
        if is_detection(body):
            return _detection_answer(body)
        if is_simulation(body):
            return _chat(json.dumps({"activations": [5] * _n_tokens(body)}))
        return _chat(" tokens that matter.")
    return _echo(body["prompt"])


def _simulation_fault(mode: str, body: dict[str, Any]) -> dict[str, Any]:
    if "prompt" in body:  # echo simulations
        return (
            _echo(body["prompt"], upto=len(body["prompt"]) // 2)
            if mode == "truncated"
            else _chat("")
        )
    if is_rule_request(body):
        if mode == "truncated":
            return _chat(_description_rule(body)[:9], finish_reason="length")
        if mode == "wrong-count":
            return _chat('{"regex": "(unclosed"}')
        return _chat("Sure! The rule matches the words in the description.")
    n = _n_tokens(body)
    if mode == "truncated":
        return _chat(json.dumps({"activations": [5] * n})[: 8 + n], finish_reason="length")
    if mode == "wrong-count":
        return _chat(json.dumps({"activations": [5] * (n - 1)}))
    return _chat("Sure! Here are the activations for each token: 0, 0, 5 and then 9.")  # not-json
