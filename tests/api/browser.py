"""The web client in a real browser: two headless Chromium sessions on two nodes.

    browser.py NODE_A_PORT NODE_B_PORT NODE_A_PID ARTIFACT_DIR

Each browser reaches the cluster through its own load balancer (a TCP proxy that
connects to the first node of its list that accepts), Alice's preferring node A and
Bob's node B, as a browser behind a real load balancer would. They register, chat, see
each other's typing, read receipts, presence and reactions, edit and delete, page back
through history and start a direct chat with unread counts. Then node A is killed: Alice's
page must reconnect through her balancer to node B and show everything she missed exactly
once, in order, and her message sent while offline must go from pending to stored.
The pages must have loaded the TypeScript SDK's bundle, `/natter.js`, which does all
their socket and REST traffic. Screenshots (desktop and phone width) are saved in
ARTIFACT_DIR.

Chromium and chromedriver are Debian's (`NATTER_TEST_CHROMIUM`, `NATTER_TEST_CHROMEDRIVER`).
"""

import asyncio
import json
import os
import signal
import sys
import threading
import time
import urllib.request

from axe_selenium_python import Axe
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "faults"))
from proxy import pipe  # noqa: E402  (the fault matrix's TCP proxy: one copy of the pump)

WAIT = 20


class Balancer:
    """A TCP load balancer: each connection goes to the first upstream that accepts it."""

    def __init__(self, loop, upstreams):
        self.loop = loop
        self.upstreams = upstreams
        self.refusing = False
        self.chosen = []
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self.handle, "127.0.0.1", 0), loop
        ).result()
        self.url = "http://127.0.0.1:%d/" % self.server.sockets[0].getsockname()[1]

    async def handle(self, client_reader, client_writer):
        if self.refusing:
            client_writer.transport.abort()
            return
        for port in self.upstreams:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self.chosen.append(port)
            await asyncio.gather(pipe(client_reader, writer), pipe(reader, client_writer))
            return
        client_writer.transport.abort()


def start_loop():
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    return loop


def browser(url, width=1280, height=800):
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ["NATTER_TEST_CHROMIUM"]
    # Headless Chromium reports a pointer that cannot hover; a desktop's mouse can, so
    # message tools appear on hover as they do for people at a desk.
    mouse = "--blink-settings=primaryHoverType=2,availableHoverTypes=2,primaryPointerType=4,availablePointerTypes=4"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--disable-extensions", "--no-first-run", f"--window-size={width},{height}", mouse):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(os.environ["NATTER_TEST_CHROMEDRIVER"]))
    driver.set_window_size(width, height)
    driver.get(url)
    return driver


def wait(driver, predicate, what):
    def check(d):
        try:
            return predicate(d)
        except StaleElementReferenceException:
            return False

    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(check)
    except Exception:
        raise AssertionError(f"timed out waiting for {what}; page text:\n{driver.find_element(By.TAG_NAME, 'body').text}")


def css(driver, selector):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def visible(driver, selector):
    return wait(driver, lambda d: next((e for e in css(d, selector) if e.is_displayed()), None), selector)


def message(driver, text):
    """The stored (not pending) message item whose text is `text`."""
    for item in css(driver, "#messages li.msg[data-seq]"):
        if item.find_element(By.CSS_SELECTOR, ".text").text == text:
            return item
    return None


def wait_message(driver, text):
    return wait(driver, lambda d: message(d, text), f"message {text!r}")


def seqs_and_texts(driver):
    items = css(driver, "#messages li.msg[data-seq]")
    return [(int(i.get_attribute("data-seq")), i.find_element(By.CSS_SELECTOR, ".text").text) for i in items]


def type_and_send(driver, text):
    box = visible(driver, "#text")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def register(driver, username, display_name):
    visible(driver, "#username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys("correct horse battery")
    driver.find_element(By.ID, "display-name").send_keys(display_name)
    driver.find_element(By.ID, "register-button").click()
    wait(driver, lambda d: d.find_element(By.ID, "me-name").text == display_name, "signed in")
    wait(driver, lambda d: d.find_element(By.ID, "connection").text == "Connected", "connected")


def room_button(driver, name):
    for button in css(driver, "#room-list button.room"):
        if button.find_element(By.CSS_SELECTOR, ".name").text.endswith(name):
            return button
    return None


def open_room(driver, name):
    wait(driver, lambda d: room_button(d, name), f"room {name} in the list").click()
    wait(driver, lambda d: d.find_element(By.ID, "room-title").text == name, f"room {name} open")


def tool(driver, item, selector):
    """A message's hover tool: hover the message first, as a person would."""
    ActionChains(driver).move_to_element(item).perform()
    button = item.find_element(By.CSS_SELECTOR, selector)
    wait(driver, lambda d: button.is_displayed(), selector)
    return button


def rest(base, method, path, token, body=None):
    request = urllib.request.Request(
        base + "v1" + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def assert_accessible(driver, view):
    """axe-core (bundled with axe-selenium-python) finds nothing serious on the page."""
    axe = Axe(driver)
    axe.inject()
    problems = [
        f"{v['id']} ({v['impact']}): {v['help']}: "
        + "; ".join(f"{n['target']}: {n.get('failureSummary')}" for n in v["nodes"][:3])
        for v in axe.run()["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not problems, f"accessibility of {view}:\n" + "\n".join(problems)


def shot(driver, artifacts, name):
    path = os.path.join(artifacts, name)
    driver.save_screenshot(path)
    print("screenshot", path)


def main():
    port_a, port_b, pid_a, artifacts = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    os.makedirs(artifacts, exist_ok=True)
    for old in os.listdir(artifacts):
        if old.endswith(".png"):
            os.remove(os.path.join(artifacts, old))
    loop = start_loop()
    alice_lb = Balancer(loop, [port_a, port_b])
    bob_lb = Balancer(loop, [port_b, port_a])
    alice = browser(alice_lb.url)
    bob = browser(bob_lb.url)
    try:
        run(alice, bob, alice_lb, bob_lb, port_a, port_b, pid_a, artifacts)
    except BaseException:
        shot(alice, artifacts, "failure-alice.png")
        shot(bob, artifacts, "failure-bob.png")
        for name, driver in (("alice", alice), ("bob", bob)):
            for entry in driver.get_log("browser"):
                print(name, "console:", entry)
        raise
    finally:
        alice.quit()
        bob.quit()


def run(alice, bob, alice_lb, bob_lb, port_a, port_b, pid_a, artifacts):
    visible(alice, "#username")
    assert_accessible(alice, "the sign-in form")
    register(alice, "alice", "Alice")
    register(bob, "bob", "Bob")
    assert set(alice_lb.chosen) == {port_a} and set(bob_lb.chosen) == {port_b}, "each on its own node"
    # The page runs on the TypeScript SDK: app.js imported the SDK's bundle (SPEC §13).
    for driver in (alice, bob):
        loaded = driver.execute_script(
            "return performance.getEntriesByType('resource').map((e) => new URL(e.name).pathname)")
        assert "/natter.js" in loaded, f"the page did not load /natter.js: {loaded}"

    # Alice creates a public room; Bob finds it and joins.
    alice.find_element(By.ID, "new-room-button").click()
    visible(alice, "#room-name").send_keys("general")
    alice.find_element(By.CSS_SELECTOR, "#new-room-form button[type=submit]").click()
    wait(alice, lambda d: d.find_element(By.ID, "room-title").text == "general", "general open")
    bob.find_element(By.ID, "browse-button").click()
    visible(bob, "#browse-list button.join").click()
    wait(bob, lambda d: d.find_element(By.ID, "room-title").text == "general", "bob in general")

    # They chat across the two nodes.
    type_and_send(alice, "Hello Bob")
    wait_message(bob, "Hello Bob")
    wait_message(alice, "Hello Bob")

    # Bob types; Alice sees it; Bob sends and the indicator goes.
    visible(bob, "#text").send_keys("Hi Al")
    wait(alice, lambda d: d.find_element(By.ID, "typing").text == "Bob is typing…", "typing shown")
    visible(bob, "#text").send_keys("ice" + Keys.ENTER)
    wait_message(alice, "Hi Alice")
    wait(alice, lambda d: d.find_element(By.ID, "typing").text == "", "typing cleared")

    # Read receipts: Bob has read everything, Alice has read his reply.
    wait(alice, lambda d: any("Seen by Bob" in r.text for r in css(d, "#messages .receipts")), "Alice sees Bob's receipt")
    wait(bob, lambda d: any("Seen by Alice" in r.text for r in css(d, "#messages .receipts")), "Bob sees Alice's receipt")

    # Presence: Bob is here, in Alice's member list.
    alice.find_element(By.ID, "members-button").click()
    bob_id = wait(alice, lambda d: next((li.get_attribute("data-user-id") for li in css(d, "#member-list li")
                                         if "Bob" in li.text), None), "Bob in the member list")
    wait(alice, lambda d: "online" in d.find_element(By.CSS_SELECTOR, f"#member-list li[data-user-id='{bob_id}'] .dot")
         .get_attribute("class"), "Bob's presence dot")

    # Bob reacts; Alice sees the count.
    tool(bob, wait_message(bob, "Hello Bob"), "button.react[data-emoji='👍']").click()
    wait(alice, lambda d: (m := message(d, "Hello Bob")) and "👍 1" in m.text, "the reaction")

    # Alice edits and then deletes; Bob sees both.
    tool(alice, wait_message(alice, "Hello Bob"), "button.edit").click()
    box = visible(alice, "#text")
    box.send_keys("!" + Keys.ENTER)
    wait_message(bob, "Hello Bob!")
    wait(bob, lambda d: "(edited)" in message(d, "Hello Bob!").text, "edited mark")
    type_and_send(alice, "a mistake")
    wait_message(bob, "a mistake")
    item = wait_message(alice, "a mistake")
    tool(alice, item, "button.delete").click()
    tool(alice, item, "button.delete").click()
    wait(bob, lambda d: any(i.find_element(By.CSS_SELECTOR, ".text").text == "Message deleted"
                            for i in css(d, "#messages li.msg.deleted")), "the tombstone")
    # Found afresh: the list re-renders on every event, so an element found before the
    # delete is stale by now.
    assert message(bob, "Hello Bob!").get_attribute("data-seq") == "1"

    shot(alice, artifacts, "desktop-alice.png")
    shot(bob, artifacts, "desktop-bob.png")

    # Scroll-back paging: 120 messages in a room Bob opens for the first time.
    token = alice.execute_script("return localStorage.getItem('natter.token')")
    archive = rest(alice_lb.url, "POST", "/rooms", token, {"name": "archive", "kind": "public"})
    for i in range(1, 121):
        rest(alice_lb.url, "POST", f"/rooms/{archive['id']}/messages", token, {"text": f"old {i}"})
    bob.find_element(By.ID, "browse-button").click()
    wait(bob, lambda d: next((li for li in css(d, "#browse-list li") if "archive" in li.text), None), "archive listed") \
        .find_element(By.CSS_SELECTOR, "button.join").click()
    wait(bob, lambda d: d.find_element(By.ID, "room-title").text == "archive", "archive open")
    wait_message(bob, "old 120")
    assert len(seqs_and_texts(bob)) < 120, "only the latest page at first"
    for _ in range(10):
        if "beginning" in bob.find_element(By.ID, "history-status").text:
            break
        bob.execute_script("document.getElementById('history').scrollTop = 0")
        time.sleep(0.5)
    wait(bob, lambda d: "beginning" in d.find_element(By.ID, "history-status").text, "the beginning of history")
    assert seqs_and_texts(bob) == [(i, f"old {i}") for i in range(1, 121)]

    # A direct chat: Alice starts it from the member list; Bob sees it with an unread count.
    visible(alice, f"#member-list li[data-user-id='{bob_id}'] button.dm").click()
    wait(alice, lambda d: d.find_element(By.ID, "room-title").text == "Bob", "the DM open")
    type_and_send(alice, "psst")
    wait_message(alice, "psst")
    wait(bob, lambda d: (b := room_button(d, "Alice")) and b.find_element(By.CSS_SELECTOR, ".unread").text == "1", "Bob's unread DM")
    open_room(bob, "Alice")
    wait_message(bob, "psst")
    wait(bob, lambda d: not room_button(d, "Alice").find_elements(By.CSS_SELECTOR, ".unread"), "unread cleared")

    # Phone width: the list, then the room with a way back.
    bob.set_window_size(390, 844)
    visible(bob, "#back-button").click()
    open_room(bob, "general")
    shot(bob, artifacts, "phone.png")
    assert_accessible(bob, "a conversation at phone width")
    visible(bob, "#back-button").click()
    visible(bob, "#room-list")
    shot(bob, artifacts, "phone-list.png")
    bob.set_window_size(1280, 800)
    open_room(bob, "general")
    open_room(alice, "general")

    # Node A dies. Alice's balancer is slow to notice (refuses for a moment), so her
    # page shows it is reconnecting and holds her send as pending; Bob chats on.
    alice_lb.refusing = True
    os.kill(pid_a, signal.SIGKILL)
    wait(alice, lambda d: d.find_element(By.ID, "connection").text == "Reconnecting…", "Alice reconnecting")
    type_and_send(alice, "sent while offline")
    visible(alice, "#messages li.msg.pending")
    for i in range(1, 4):
        type_and_send(bob, f"while you were away {i}")
        wait_message(bob, f"while you were away {i}")
    shot(alice, artifacts, "reconnecting-alice.png")
    alice_lb.refusing = False
    wait(alice, lambda d: d.find_element(By.ID, "connection").text == "Connected", "Alice reconnected")
    assert alice_lb.chosen[-1] == port_b, "Alice's page now talks to node B"
    wait_message(alice, "sent while offline")
    wait_message(bob, "sent while offline")
    for i in range(1, 4):
        wait_message(alice, f"while you were away {i}")
    wait(alice, lambda d: not css(d, "#messages li.msg.pending"), "nothing pending")
    for driver in (alice, bob):
        seen = seqs_and_texts(driver)
        seqs = [seq for seq, _ in seen]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"every seq once, in order: {seqs}"
        texts = [text for _, text in seen]
        for text in ["sent while offline"] + [f"while you were away {i}" for i in range(1, 4)]:
            assert texts.count(text) == 1, f"{text!r} shown {texts.count(text)} times"
    shot(alice, artifacts, "reconnected-alice.png")

    # The README's picture: Bob writes to Alice's DM (unread in her list) and types in
    # the room she is looking at.
    open_room(bob, "Alice")
    type_and_send(bob, "See you at lunch?")
    wait(alice, lambda d: (b := room_button(d, "Bob")) and b.find_elements(By.CSS_SELECTOR, ".unread"), "Alice's unread DM")
    open_room(bob, "general")
    visible(bob, "#text").send_keys("On my way")
    wait(alice, lambda d: d.find_element(By.ID, "typing").text == "Bob is typing…", "typing shown")
    shot(alice, artifacts, "desktop.png")
    assert_accessible(alice, "a conversation with the member list")

    # Both pages opened their sockets on node B with single-use tickets, never with the
    # token in the URL, where proxies would log it (SPEC §10).
    with urllib.request.urlopen(f"http://127.0.0.1:{port_b}/metrics", timeout=10) as response:
        metrics = dict(
            line.rsplit(" ", 1) for line in response.read().decode().splitlines()
            if line.startswith("natter_websocket_") and "_total" in line
        )
    redeemed = [float(v) for k, v in metrics.items() if k.startswith("natter_websocket_tickets_redeemed_total")]
    in_urls = [float(v) for k, v in metrics.items() if k.startswith("natter_websocket_tokens_in_urls_total")]
    assert redeemed and redeemed[0] >= 2, metrics
    assert in_urls == [0.0], metrics
    print("browser flow passed")


if __name__ == "__main__":
    main()
