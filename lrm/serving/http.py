"""JSON HTTP endpoint for an artifact: `python -m lrm.serving.http --artifact export/x --port 8000`.

POST /recommend {"item_ids": [[...], ...], "timestamps": [[...], ...], "k": 10, "exclude_history": true,
                 "query_times": [...]?}  →  {"item_ids": [[...]], "scores": [[...]]}
POST /score {"item_ids": [[...], ...], "timestamps": [[...], ...], "candidates": [[...], ...],
             "query_times": [...]?, "kind": "retrieval" | "target_aware"?}  →  {"scores": [[...], ...]}
             (one score per candidate, in the order given; M-FALCON, one model pass per request)
GET /health → {"status": "ok", ...}. Bad requests get a 4xx with {"error": message}; the server stays up.
Stdlib http.server only (plus the jax + numpy loader).
"""
from __future__ import annotations

import argparse
import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lrm.serving.loader import Recommender, RequestError

MAX_BODY_BYTES = 4 << 20
MAX_USERS = 1024
_KEYS = {"item_ids", "timestamps", "k", "exclude_history", "query_times"}
_SCORE_KEYS = {"item_ids", "timestamps", "candidates", "query_times", "kind"}


def _parse(body: bytes, known: set[str], required: tuple[str, ...]) -> tuple[dict | None, tuple[int, dict] | None]:
    """(request, None) or (None, (status, error reply)): JSON object, known fields, required ones, size."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, (400, {"error": f"body is not JSON: {e}"})
    if not isinstance(request, dict):
        return None, (400, {"error": f"body must be a JSON object, got {type(request).__name__}"})
    unknown = sorted(set(request) - known)
    if unknown:
        return None, (400, {"error": f"unknown fields {unknown}; known: {sorted(known)}"})
    for key in required:
        if key not in request:
            return None, (400, {"error": f"missing field {key!r}"})
    if isinstance(request["item_ids"], list) and len(request["item_ids"]) > MAX_USERS:
        return None, (413, {"error": f"at most {MAX_USERS} users per request, got {len(request['item_ids'])}"})
    return request, None


def answer(recommender: Recommender, body: bytes) -> tuple[int, dict]:
    """(HTTP status, JSON reply) of one /recommend request body; never raises for bad input."""
    request, error = _parse(body, _KEYS, ("item_ids", "timestamps"))
    if error:
        return error
    try:
        ids, scores = recommender.recommend(request["item_ids"], request["timestamps"], k=request.get("k", 10),
                                            exclude_history=request.get("exclude_history", True),
                                            query_times=request.get("query_times"))
    except RequestError as e:
        return 422, {"error": str(e)}
    return 200, {"item_ids": ids.tolist(), "scores": scores.tolist()}


def answer_score(recommender: Recommender, body: bytes) -> tuple[int, dict]:
    """(HTTP status, JSON reply) of one /score request body; never raises for bad input."""
    request, error = _parse(body, _SCORE_KEYS, ("item_ids", "timestamps", "candidates"))
    if error:
        return error
    try:
        scores = recommender.score_candidates(request["item_ids"], request["timestamps"], request["candidates"],
                                              request.get("query_times"), kind=request.get("kind", "retrieval"))
    except RequestError as e:
        return 422, {"error": str(e)}
    return 200, {"scores": [s.tolist() for s in scores]}


ROUTES = {"/recommend": answer, "/score": answer_score}


def make_handler(recommender: Recommender) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path != "/health":
                return self._reply(404, {"error": f"no route GET {self.path}; try POST /recommend"})
            meta = recommender.metadata
            self._reply(200, {"status": "ok", "dataset": meta["dataset"], "model": meta["model"],
                              "max_len": meta["max_len"], "num_items": meta["num_items"],
                              "num_candidates": recommender.num_candidates})

        def do_POST(self) -> None:  # noqa: N802
            route = ROUTES.get(self.path)
            if route is None:
                return self._reply(404, {"error": f"no route POST {self.path}; try POST {' or '.join(ROUTES)}"})
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return self._reply(411, {"error": "Content-Length header required"})
            if not 0 <= length <= MAX_BODY_BYTES:
                return self._reply(413, {"error": f"body of {length} bytes; the limit is {MAX_BODY_BYTES}"})
            try:
                status, payload = route(recommender, self.rfile.read(length))
            except Exception as e:  # a bug, not the client's fault: report it and keep serving
                logging.exception("request failed")
                status, payload = 500, {"error": f"internal error: {type(e).__name__}: {e}"}
            self._reply(status, payload)

        def log_message(self, fmt: str, *args) -> None:
            logging.info("%s %s", self.address_string(), fmt % args)

    return Handler


def serve(artifact: str, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(Recommender.load(artifact)))
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True, help="directory written by lrm-export")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    server = serve(args.artifact, args.host, args.port)
    print(f"serving {args.artifact} on http://{args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
