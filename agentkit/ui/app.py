"""The `agentkit ui` web app: read-only pages over a store, on Starlette.

Every page reads through store.reader.StoreReader (a read-only SQLite connection) and
renders a Jinja2 template with autoescape on, so model text never becomes markup; the
pictures are SVG drawn on the server (ui/svg.py). ``/api/version`` changes whenever any
process commits to the store; static/live.js polls it and swaps the page's <main> in place.

    app = create_app("runs.db")      # a Starlette app; serve(...) runs it on uvicorn
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from agentkit.errors import StoreError
from agentkit.store.reader import StoreReader
from agentkit.store.runs import RUN_STATUSES
from agentkit.store.trainer import TrainerFiles, running_pid

from . import views

__all__ = ["create_app", "serve"]

PAGE = 50
CHOICES_TTL_S = 10.0  # the filter menus' distinct values: one scan of runs, so reused a while


def _env() -> Environment:
    env = Environment(loader=PackageLoader("agentkit.ui"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, secs=_secs, num=_num, when=_when, short=_short, tail=_tail)
    return env


def _pct(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * float(value):.{digits}f}%"


def _secs(value: Any) -> str:
    if value is None:
        return "–"
    v = float(value)
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:,.3g}"


def _when(value: str | None) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM:SS' (UTC, as stored)."""
    if not value:
        return "–"
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def _tail(value: str, n: int = 48) -> str:
    """A long path by its end, where the file name is."""
    return value if len(value) <= n else "…" + value[-(n - 1):]


def _short(value: Any, n: int = 80) -> str:
    text = "" if value is None else str(value).replace("\n", " ⏎ ")
    return text if len(text) <= n else text[: n - 1] + "…"


class _Pages:
    """The request handlers, sharing one reader and one template environment."""

    def __init__(self, reader: StoreReader):
        self.reader = reader
        self.templates = Jinja2Templates(env=_env())
        self._choices: tuple[float, dict[str, list[str]]] = (0.0, {})

    def render(self, request: Request, name: str, **context: Any) -> HTMLResponse:
        context.setdefault("section", name.split(".")[0])
        context["store_path"] = self.reader.path
        return self.templates.TemplateResponse(request, name, context)

    def choices(self) -> dict[str, list[str]]:
        at, found = self._choices
        if time.monotonic() - at > CHOICES_TTL_S:
            found = self.reader.run_choices()
            found["status"] = sorted(set(found["status"]) | set(RUN_STATUSES) | {"running"})
            self._choices = (time.monotonic(), found)
        return found

    # -- pages ------------------------------------------------------------------------------

    def runs(self, request: Request) -> Response:
        q = request.query_params
        filters = {k: q.get(k) or None for k in ("suite", "status", "graph", "policy_version", "since", "until")}
        before = _int(q.get("before"))
        runs = self.reader.runs(before=before, limit=PAGE, **filters)
        kept = {k: v for k, v in filters.items() if v}
        older = "?" + urlencode({**kept, "before": runs[-1].id}) if len(runs) == PAGE else None
        return self.render(request, "runs.html", runs=runs, filters=filters, choices=self.choices(), older=older,
                           newest=("?" + urlencode(kept)) if before else None)

    def run(self, request: Request) -> Response:
        run = self.reader.run(request.path_params["run_id"])
        return self.render(request, "run.html", view=views.run_view(run, views.token_decoder(run.model)),
                           section="runs")

    def improve_list(self, request: Request) -> Response:
        return self.render(request, "improve_list.html", runs=self.reader.improve_runs(), section="improve")

    def improve(self, request: Request) -> Response:
        run = self.reader.improve_run(request.path_params["improve_id"])
        rounds = run.rounds or []
        return self.render(request, "improve.html", run=run, rounds=rounds, chart=views.improve_chart(rounds))

    def policies(self, request: Request) -> Response:
        policies = self.reader.policies()
        return self.render(request, "policies.html", policies=policies, tree=views.lineage(policies),
                           pair_counts=self.reader.pair_counts())

    def policy(self, request: Request) -> Response:
        policy = self.reader.policy(request.path_params["version"])
        children = [p for p in self.reader.policies() if p.parent == policy.version]
        return self.render(request, "policy.html", policy=policy, events=self.reader.policy_events(policy.version),
                           children=children, section="policies")

    def pairs(self, request: Request) -> Response:
        q = request.query_params
        kind = q.get("kind") or None
        pairs = self.reader.pairs(before=_int(q.get("before")), limit=PAGE, kind=kind)
        older = "?" + urlencode({**({"kind": kind} if kind else {}), "before": pairs[-1].id}) if len(pairs) == PAGE else None
        return self.render(request, "pairs.html", pairs=pairs, kind=kind, older=older)

    def pair(self, request: Request) -> Response:
        pair = self.reader.pair(request.path_params["pair_id"])
        chosen, rejected = views.marked_diff(pair.chosen_text, pair.rejected_text)
        return self.render(request, "pair.html", pair=pair, chosen=chosen, rejected=rejected, section="pairs")

    def memory(self, request: Request) -> Response:
        items = self.reader.library_items()
        for item in items:
            item["utility"] = views.utility(item)
        return self.render(request, "memory.html", items=items, versions=self.reader.library_versions(),
                           nodes=self.reader.library_nodes())

    def trainer(self, request: Request) -> Response:
        pid = running_pid(TrainerFiles.beside(self.reader.path).pid)
        return self.render(request, "trainer.html", states=self.reader.trainer_states(),
                           cycles=self.reader.trainer_cycles(), pid=pid)

    def version(self, request: Request) -> Response:
        return JSONResponse({"version": self.reader.version()}, headers={"Cache-Control": "no-store"})

    # -- errors -----------------------------------------------------------------------------

    def not_found(self, request: Request, exc: Exception) -> Response:
        message = str(exc.detail) if isinstance(exc, HTTPException) else str(exc)
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        return self.templates.TemplateResponse(request, "error.html", {
            "message": message, "status": status, "section": "", "store_path": self.reader.path}, status_code=status)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def create_app(store: str | os.PathLike[str]) -> Starlette:
    """The app over the store file ``store`` (which must exist); it never writes to it."""
    pages = _Pages(StoreReader(store))
    static = Path(__file__).parent / "static"
    routes = [
        Route("/", pages.runs, name="runs"),
        Route("/runs/{run_id:int}", pages.run),
        Route("/improve", pages.improve_list),
        Route("/improve/{improve_id:int}", pages.improve),
        Route("/policies", pages.policies),
        Route("/policies/{version}", pages.policy),
        Route("/pairs", pages.pairs),
        Route("/pairs/{pair_id:int}", pages.pair),
        Route("/memory", pages.memory),
        Route("/trainer", pages.trainer),
        Route("/api/version", pages.version),
        Mount("/static", StaticFiles(directory=static), name="static"),
    ]
    handlers = {StoreError: pages.not_found, HTTPException: pages.not_found}
    return Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]


def serve(store: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning") -> None:
    """Run the app on uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(store), host=host, port=port, log_level=log_level)

