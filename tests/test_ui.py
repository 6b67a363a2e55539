"""`agentkit ui`: the pages over a real store (filled by run_tasks, improve and the pair
store), read-only and escaped; then a real server driven by the system Chromium through
Playwright, clicking through what a person does. AGENTKIT_UI_SCREENSHOTS=DIR saves each
page there (docs/ui/ holds the committed ones)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _ui_store import INSIGHT, SCRIPT, fill_store


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    path = root / "runs.db"
    ids = fill_store(path, root)
    return path, ids


@pytest.fixture(scope="module")
def client(filled):
    from starlette.testclient import TestClient

    from agentkit.ui import create_app

    with TestClient(create_app(filled[0])) as c:
        yield c


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    # the database and its write-ahead log (an empty log = none); -shm is the readers' shared memory
    for p in (path, path.with_name(path.name + "-wal")):
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()


# -- pages, without a browser --------------------------------------------------------------------


def test_every_page_answers_and_the_store_is_left_unchanged(filled, client):
    path, ids = filled
    before = _digest(path)
    for url in ["/", "/?status=failure", f"/runs/{ids['failed']}", f"/runs/{ids['script']}", "/improve",
                f"/improve/{ids['improve']}", "/policies", "/policies/v1", "/policies/base", "/pairs",
                f"/pairs/{ids['pair']}", "/memory", "/trainer", "/api/version", "/static/style.css"]:
        assert client.get(url).status_code == 200, url
    assert client.post("/").status_code == 405  # nothing to write with
    assert _digest(path) == before


def test_missing_things_are_a_404_naming_them(client):
    page = client.get("/runs/999999")
    assert page.status_code == 404 and "no run with id 999999" in page.text
    assert client.get("/policies/v99").status_code == 404


def test_model_text_is_escaped(filled, client):
    page = client.get(f"/runs/{filled[1]['script']}").text
    assert SCRIPT not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_runs_filter_and_keyset_pages(filled):
    from agentkit.store.reader import StoreReader

    reader = StoreReader(filled[0])
    failures = reader.runs(status="failure", limit=100)
    assert failures and {r.status for r in failures} == {"failure"}
    everything = reader.runs(limit=1000)
    first = reader.runs(limit=5)
    second = reader.runs(limit=5, before=first[-1].id)
    assert [r.id for r in first + second] == [r.id for r in everything[:10]]
    assert reader.runs(suite="no-such-suite") == []
    assert reader.runs(since="2999-01-01") == []


def test_the_reader_cannot_write(filled):
    import sqlite3

    from agentkit.store.reader import StoreReader

    reader = StoreReader(filled[0])
    with pytest.raises(sqlite3.OperationalError):
        reader.conn.execute("DELETE FROM runs")


def test_the_run_page_has_the_path_checks_heat_map_and_search_tree(filled, client):
    from agentkit.store.reader import StoreReader
    from agentkit.ui.views import run_view

    view = run_view(StoreReader(filled[0]).run(filled[1]["failed"]))
    assert [(n["node"], n["visits"], n["calls"]) for n in view.nodes] == [("solve", 1, 1)]
    [call] = view.calls
    assert [ok for _, ok, _ in call.checks] == [True, False]  # step 1 right, step 2 wrong
    assert [value for _, _, value in call.checks] == [1.0, 0.0]  # the values set_step_values stored
    assert call.heat.count("<i ") == len(call.step.logprobs)
    searched = [r for r in StoreReader(filled[0]).runs(limit=200) if r.calls and r.calls > 1]
    trees = [run_view(StoreReader(filled[0]).run(r.id)) for r in searched]
    tree = next(v for v in trees if v.tree is not None)
    assert tree.tree_size > 1 and "tree-node marked" in tree.tree  # the chosen path


def _cells(heat) -> list[str]:
    import html
    import re

    return [html.unescape(t).replace("↵\n", "\n") for t in re.findall(r'<span class="h\d" title="[^"]*">(.*?)</span>', heat, re.S)]


def test_the_heat_map_shows_each_tokens_text_when_the_runs_tokenizer_is_here(filled):
    from agentkit.store.reader import StoreReader
    from agentkit.ui.views import run_view, token_decoder

    reader = StoreReader(filled[0])
    run = reader.run(filled[1]["failed"])
    decode = token_decoder(run.model)
    assert decode is not None  # the tiny model's directory, saved beside the store
    [call] = run_view(run, decode).calls
    assert 'class="heat tokens"' in call.heat
    assert "".join(_cells(call.heat)) == call.step.completion_text  # one character a token
    [script] = run_view(reader.run(filled[1]["script"]), decode).calls
    assert _cells(script.heat)[:2] == ["<", "s"] and "<script" not in script.heat
    # a model whose tokenizer is not on this machine: cells without text, nothing loaded
    assert token_decoder("scripted") is None and token_decoder("no/such-model") is None
    [plain] = run_view(run, token_decoder("scripted")).calls
    assert _cells(plain.heat) == [] and plain.heat.count("<i ") == len(run.steps[0].logprobs)


def test_the_diagram_draws_the_whole_graph_with_the_path_taken(filled):
    from agentkit.store.reader import StoreReader
    from agentkit.ui.views import run_view

    reader = StoreReader(filled[0])
    routed = run_view(reader.run(filled[1]["routed"]))
    assert [(n["node"], n["role"], n["visits"]) for n in routed.nodes] == [
        ("route", "router", 1), ("calculate", "tool", 0), ("solve", "solver", 1), ("check", "verifier", 1)]
    assert routed.diagram.count('class="node unvisited"') == 1 and ">calculate</text>" in routed.diagram
    assert routed.diagram.count('class="edge taken"') == 2  # route -> solve -> check
    assert routed.diagram.count('class="edge"') == 2  # route -> calculate -> check, not taken
    assert ">reasoning ×1<" in routed.diagram and ">calculator<" in routed.diagram
    revised = run_view(reader.run(filled[1]["revised"]))
    assert [(n["node"], n["visits"]) for n in revised.nodes] == [("solve", 3), ("review", 3), ("check", 1)]
    assert ">×3<" in revised.diagram and ">revise ×2<" in revised.diagram and ">accept ×1<" in revised.diagram


def test_marked_diff_marks_only_the_words_that_differ():
    from agentkit.ui.views import marked_diff

    chosen, rejected = marked_diff(" 7 * 6 = 42", " 7 * 6 = <41>")
    assert chosen == ' 7 * 6 = <mark class="ins">42</mark>'
    assert rejected == ' 7 * 6 = <mark class="del">&lt;41&gt;</mark>'


def test_the_version_changes_when_anyone_writes(filled):
    from agentkit.store import TrajectoryStore
    from agentkit.store.reader import StoreReader

    reader = StoreReader(filled[0])
    first = reader.version()
    assert reader.version() == first
    with TrajectoryStore(filled[0]) as store:
        store.finish_run(store.start_run("solve", suite="arithmetic"), status="error", error="for the version test")
    assert reader.version() != first


def test_the_cli_refuses_a_missing_store_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from agentkit.cli.app import app

    result = CliRunner().invoke(app, ["ui", "--store", str(tmp_path / "none.db")])
    assert result.exit_code == 1
    assert "no store at" in result.output and "Traceback" not in result.output


# -- in a real browser ---------------------------------------------------------------------------

CHROMIUM = next((p for p in (os.environ.get("AGENTKIT_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), "/usr/bin/chromium") if p and Path(p).exists()), None)

browser_only = pytest.mark.skipif(CHROMIUM is None, reason="no chromium found: apt-get install -y chromium "
                                  "(or set AGENTKIT_CHROMIUM); Playwright's own download cannot work here")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(filled):
    """The real `agentkit ui` command on loopback, over the filled store."""
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agentkit.cli", "ui", "--store", str(filled[0]), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/api/version", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"agentkit ui did not start: {proc.stdout.read()}")
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def page(server):
    pytest.importorskip("playwright", reason="pip install -e '.[test]' installs playwright")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        page = context.new_page()
        page.dialogs = []
        page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        yield page
        browser.close()


def _shot(page, name: str) -> None:
    out = os.environ.get("AGENTKIT_UI_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / f"{name}.png"), full_page=True)


@pytest.mark.browser
@browser_only
def test_click_through_runs_run_improve_policy_and_pair(server, page, filled):
    from playwright.sync_api import expect

    ids = filled[1]
    page.goto(server + "/")
    expect(page.locator("h1")).to_have_text("Runs")
    _shot(page, "runs")

    # the runs page, filtered to failures
    page.select_option("select[name=status]", "failure")
    page.click("button[type=submit]")
    page.wait_for_url("**status=failure**")
    statuses = page.locator("table.runs tbody td:nth-child(2)").all_inner_texts()
    assert statuses and set(statuses) == {"failure"}

    # one failed run: ✓ and ✗ steps, the heat map, the path
    page.click(f"table.runs a[href='/runs/{ids['failed']}']")
    expect(page.locator("h1")).to_contain_text(f"Run {ids['failed']}")
    expect(page.locator("ul.checks .chk.ok").first).to_be_visible()
    expect(page.locator("ul.checks .chk.bad").first).to_be_visible()
    heat = page.locator(".heat.tokens").first
    completion = page.locator("pre.completion").first.inner_text()
    assert heat.locator("span").count() == len(completion) > 5  # a cell per token, with its text
    assert heat.inner_text() == completion.replace("\n", "↵\n")
    expect(page.locator("svg.diagram")).to_be_visible()
    _shot(page, "run")

    # a graph run: the whole graph drawn, the node it did not visit faint
    page.goto(f"{server}/runs/{ids['routed']}")
    unvisited = page.locator("svg.diagram .node.unvisited")
    expect(unvisited).to_have_count(1)
    expect(unvisited).to_contain_text("calculate0 visits")
    expect(page.locator("svg.diagram .edge.taken")).to_have_count(2)
    expect(page.locator("svg.diagram .node:not(.unvisited)")).to_have_count(3)
    _shot(page, "run-graph")

    # a run that searched: its tree, the chosen path marked
    page.goto(f"{server}/runs/{ids['searched']}")
    expect(page.locator("svg.tree")).to_be_visible()
    assert page.locator("svg.tree .tree-node.marked").count() >= 2
    _shot(page, "run-search-tree")
    page.goto(server + "/")

    # an improve run and its curve
    page.click("nav >> text=Improve")
    _shot(page, "improve-list")
    page.click(f"a[href='/improve/{ids['improve']}']")
    expect(page.locator("svg.chart")).to_be_visible()
    assert page.locator("svg.chart circle").count() >= 2
    _shot(page, "improve")

    # the policy it promoted, and its gate result
    page.click("table.grid a[href='/policies/v1']")
    expect(page.locator(".gate-box .decision")).to_contain_text("promote")
    expect(page.locator(".gate-box")).to_contain_text("p adjusted")
    _shot(page, "policy")
    page.click("nav >> text=Policies")
    expect(page.locator("svg.lineage")).to_be_visible()
    _shot(page, "policies")

    # a pair, its difference marked
    page.click("nav >> text=Pairs")
    _shot(page, "pairs")
    page.click(f"a[href='/pairs/{ids['pair']}']")
    expect(page.locator("mark.ins")).to_have_count(1)
    expect(page.locator("mark.del")).to_have_count(1)
    _shot(page, "pair")

    assert page.errors == []


@pytest.mark.browser
@browser_only
def test_the_memory_and_trainer_pages_show_the_library_and_the_daemon(server, page):
    from playwright.sync_api import expect

    page.goto(server + "/memory")
    rows = page.locator("section:has(h2:text('Items')) tbody tr")
    expect(rows).to_have_count(2)
    cells = [[c.strip() for c in rows.nth(i).locator("td").all_inner_texts()] for i in range(2)]
    # id, kind, family / node, text, shown, succeeded, expected, utility, status: most shown first
    assert cells[0][:3] == ["1", "insight", "arithmetic/2"] and cells[0][4:] == ["2", "1", "1.0", "+0.00", "active"]
    assert cells[1][:3] == ["2", "exemplar", "arithmetic/2"] and cells[1][4:] == ["1", "1", "0.5", "+0.50", "active"]
    assert cells[0][3] == INSIGHT  # the model's text as text, its tags shown
    assert page.locator("section:has(h2:text('Items')) b").count() == 0
    nodes = page.locator("section:has(h2:text('Nodes')) tbody td").all_inner_texts()
    assert nodes == ["arithmetic/2", "solve", "2", "1", "50.0%"]
    versions = page.locator("section:has(h2:text('Versions')) tbody tr")
    expect(versions).to_have_count(2)
    assert [versions.nth(i).locator("td").nth(1).inner_text() for i in range(2)] == ["update from runs", "seed the library"]
    _shot(page, "memory")

    page.goto(server + "/trainer")
    expect(page.locator("h1 + p")).to_contain_text("not running")  # pid 4242 is recorded, but no pid file
    state = page.locator("section:has(h2:text('arithmetic'))").first
    expect(state.locator("h2 .badge")).to_have_text("idle")
    summary = state.locator(".summary").inner_text()
    for seen in ("RUNS EXAMINED UP TO\n12", "PAIRS TRAINED UP TO\n7", "ACTIVE POLICY\nv1", "CYCLES\n1"):  # labels in capitals
        assert seen in summary, seen
    expect(state.locator("details[open]")).to_contain_text('"decision": "reject"')
    cycle = page.locator("section:has(h2:text('Cycles')) tbody tr")
    expect(cycle).to_have_count(1)
    assert [c.strip() for c in cycle.locator("td").all_inner_texts()][:12] == [
        "1", "arithmetic", "v1", "12", "5", "7", "v2", "reject", "0.31", "1.5 s", "42.0 s", "7.2 s"]
    _shot(page, "trainer")
    assert page.errors == []


@pytest.mark.browser
@browser_only
def test_a_script_in_a_completion_is_text_and_never_runs(server, page, filled):
    from playwright.sync_api import expect

    page.goto(f"{server}/runs/{filled[1]['script']}")
    expect(page.locator("pre.completion")).to_have_text(SCRIPT)
    page.wait_for_timeout(500)
    assert page.dialogs == []


@pytest.mark.browser
@browser_only
def test_the_runs_page_updates_live_while_a_run_is_written(server, page, filled):
    from playwright.sync_api import expect

    from agentkit.store import TrajectoryStore

    page.goto(server + "/")
    page.wait_for_timeout(2500)  # the first poll has seen the version
    with TrajectoryStore(filled[0]) as store:
        run_id = store.start_run("solve", suite="live-suite", task_id="live-1")
    expect(page.locator(f"table.runs a[href='/runs/{run_id}']")).to_be_visible(timeout=10_000)
    assert page.url.rstrip("/") == server  # no navigation: the page swapped its table in place
