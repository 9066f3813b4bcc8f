"""The web chat page (common/static/index.html) driven in real headless Chromium.

Uses Debian's /usr/bin/chromium through Playwright (its own browser download
cannot work here), against both servers started as real subprocesses (the
``server`` fixture of conftest.py).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from loadtest.serverproc import ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
REPORTS = Path(__file__).resolve().parent.parent / "reports"
TIMEOUT_MS = 20_000  # upper bound for each wait; expect() returns as soon as it holds

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)"
)
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def open_page(browser: Browser) -> Iterator:
    """Open the chat page at a base URL, log in as a name; closed after the test."""
    contexts = []

    def _open(base_url: str, name: str) -> Page:
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(base_url + "/")
        page.get_by_label("Your name").fill(name)
        page.get_by_role("button", name="Connect").click()
        expect(page.locator("#status")).to_have_text("connected")
        return page

    yield _open
    for context in contexts:
        context.close()


def unique_room(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def join(page: Page, room: str) -> None:
    page.get_by_label("Room to join").fill(room)
    page.get_by_label("Room to join").press("Enter")
    expect(page.locator(f'#rooms li.active button[data-room="{room}"]')).to_be_visible()
    expect(page.locator("#rooms li.active")).not_to_have_class(re.compile("offline"))


def say(page: Page, text: str) -> None:
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_label("Message", exact=True).press("Enter")


def messages(page: Page, room: str):
    return page.locator(f'.log[data-room="{room}"] .msg')


def test_page_served_as_html(server: ServerProcess) -> None:
    """GET / answers 200 with the chat page as text/html."""
    with urllib.request.urlopen(server.http_url + "/", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers.get_content_type() == "text/html"
        body = resp.read().decode()
    assert "<title>twinchat</title>" in body


def test_page_shows_implementation_and_errors(server: ServerProcess, open_page) -> None:
    """The page shows which server it talks to, joins lobby, and displays server errors."""
    page = open_page(server.http_url, "ada")
    expect(page.locator("#impl")).to_have_text(f"server: {server.kind}")
    expect(page).to_have_title(f"twinchat · {server.kind}")
    expect(page.locator('#rooms button[data-room="lobby"]')).to_be_visible()
    expect(page.locator("#whoami")).to_have_text("ada")
    page.evaluate("send({type: 'shout'})")  # a message type the server does not know
    expect(page.get_by_role("alert").filter(has_text="unknown_type")).to_be_visible()


def test_two_pages_see_each_others_messages(server: ServerProcess, open_page) -> None:
    """Two pages in one room see presence, each other's messages in seq order, text escaped."""
    room = unique_room("web")
    alice = open_page(server.http_url, "alice")
    bob = open_page(server.http_url, "bob")
    join(alice, room)
    join(bob, room)
    expect(alice.locator(f'.log[data-room="{room}"] .sys')).to_contain_text(
        ["bob joined · 2 members"]
    )
    expect(alice.locator(f'#rooms button[data-room="{room}"]')).to_contain_text("(2)")

    say(alice, "hello from alice")
    expect(messages(bob, room)).to_have_count(1)
    expect(messages(bob, room).first).to_contain_text("alice")
    expect(messages(bob, room).first).to_contain_text("hello from alice")
    expect(messages(bob, room).first).to_contain_text("#1")

    hostile = '<b id="injected">bold</b><img src=x onerror="window.pwned=1">'
    say(bob, hostile)
    for page in (alice, bob):
        expect(messages(page, room)).to_have_count(2)
        expect(messages(page, room).nth(1).locator(".text")).to_have_text(hostile)
        expect(messages(page, room).nth(1)).to_contain_text("#2")
        assert page.locator("#injected").count() == 0
        assert page.evaluate("window.pwned === undefined")

    REPORTS.mkdir(exist_ok=True)
    alice.screenshot(path=str(REPORTS / f"web_page_{server.kind}.png"))


class CuttableProxy:
    """A loopback TCP relay in front of a server whose connections the test can cut.

    While cut, it drops every relayed connection and closes new ones at once,
    like a network outage; ``restore()`` relays again.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_off = False
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # listener closed
            with self.lock:
                if self.cut_off:
                    client.close()
                    continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            self.cut_off = True
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        with self.lock:
            self.cut_off = False

    def close(self) -> None:
        self.cut()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        self.thread.join(timeout=5)
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                sock.close()


def test_reconnect_replays_missed_messages(server: ServerProcess, open_page) -> None:
    """After a network cut the page reconnects, rejoins with since and shows what it missed."""
    room = unique_room("replay")
    proxy = CuttableProxy(server.port)
    try:
        carol = open_page(proxy.http_url, "carol")  # through the proxy
        dave = open_page(server.http_url, "dave")  # direct
        join(carol, room)
        join(dave, room)
        say(dave, "before the cut")
        expect(messages(carol, room)).to_have_count(1)

        proxy.cut()
        expect(carol.locator("#status")).to_have_class(re.compile("disconnected"))
        expect(dave.locator(f'.log[data-room="{room}"] .sys')).to_contain_text(
            ["carol left · 1 member"]
        )
        say(dave, "while carol was away 1")
        say(dave, "while carol was away 2")
        expect(messages(dave, room)).to_have_count(3)  # dave's own acks: seq 2 and 3

        proxy.restore()
        expect(carol.locator("#status")).to_have_text("connected")
        expect(messages(carol, room)).to_have_text(
            [
                re.compile(r"#1\s*dave\s*before the cut"),
                re.compile(r"#2\s*dave\s*while carol was away 1"),
                re.compile(r"#3\s*dave\s*while carol was away 2"),
            ]
        )
        expect(carol.locator(f'.log[data-room="{room}"] .sys').last).to_have_text(
            "Reconnected; caught up from seq 1."
        )
        expect(dave.locator(f'.log[data-room="{room}"] .sys').last).to_have_text(
            "carol joined · 2 members"
        )
        say(carol, "back again")
        expect(messages(dave, room)).to_have_count(4)
        expect(messages(dave, room).last).to_contain_text("#4")
    finally:
        proxy.close()
