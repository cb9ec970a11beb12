"""The operator console in a real browser (Debian's chromium, driven by Playwright).

Against the real broker and a real worker: the operator sees the failing queue, reads the
error, dry-runs and then replays after the fix; and the console keeps strangers, forged
POSTs, hostile message bodies and read-only mode's limits where they belong.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from kitty_tasks.runtime.application import app
from tests.helpers import CeleryWorker, queue_counts, wait_for
from tests.integration.console_support import (
    AUTH,
    PASSWORD,
    USER,
    Console,
    chromium_path,
    logged_in_session,
    running_console,
    screenshot_path,
)
from tests.integration.ops_tasks import FAULT_FILE_ENV, RUNS_FILE_ENV, fragile

pytestmark = [pytest.mark.rabbitmq]

DLQ = "research.tasks.dlq"
#: Playwright waits this long (ms) for what a page should show.
UI_TIMEOUT = 30_000

playwright_api = pytest.importorskip("playwright.sync_api")
playwright_api.expect.set_options(timeout=UI_TIMEOUT)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's chromium, headless; never a browser Playwright downloaded."""
    executable = chromium_path()
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        try:
            yield launched
        finally:
            launched.close()


def open_page(browser: object, console: Console) -> object:
    """A new logged-in page of ``console``, wide enough for the tables."""
    context = browser.new_context(  # type: ignore[attr-defined]
        http_credentials={"username": USER, "password": PASSWORD},
        base_url=console.base,
        viewport={"width": 1280, "height": 900},
    )
    context.set_default_timeout(UI_TIMEOUT)
    return context.new_page()


def shoot(page: object, name: str) -> None:
    """Save a full-page screenshot into docs/ when the environment asks for it."""
    path = screenshot_path(name)
    if path is not None:
        page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]


def dead_letter(url: str, body: str, headers: dict[str, object]) -> None:
    """Put one message into research.tasks.dlq the way the platform does (through dlx)."""
    with Connection(url) as connection:
        connection.Producer().publish(
            body, exchange="dlx", routing_key="research.tasks", headers=headers,
            content_type="application/json", content_encoding="utf-8",
        )  # fmt: skip


@pytest.mark.slow
def test_an_operator_finds_the_failure_reads_it_and_replays_it_after_the_fix(
    ops_url: str, tmp_path: Path, browser: object
) -> None:
    # Given a research worker whose fault is switched on, and three tasks that died of it
    fault = tmp_path / "fault"
    fault.touch()
    runs = tmp_path / "runs.log"
    env = {FAULT_FILE_ENV: str(fault), RUNS_FILE_ENV: str(runs)}
    worker = CeleryWorker(
        ops_url, ["research.tasks"], include=["tests.integration.ops_tasks"], env=env
    )
    with worker, running_console(ops_url) as console:
        with app.connection_for_write(ops_url) as connection:
            ids = [fragile.apply_async((item,), connection=connection).id for item in range(3)]
        wait_for(lambda: queue_counts(ops_url, DLQ)[0] == 3, 60, 0.25, what="3 dead letters")
        page = open_page(browser, console)

        # When the operator opens the overview (again, until the management API's figures,
        # refreshed every 5 s, count the dead letters)
        summary = page.locator("#light")  # type: ignore[attr-defined]

        def reported() -> bool:
            page.goto("/")  # type: ignore[attr-defined]
            return f"{DLQ} holds 3 dead letter(s)" in summary.inner_text()

        wait_for(reported, 30, 1.0, what="the overview to report the dead letters")

        # Then the summary says why it is not green, and the DLQ's row stands out
        assert summary.get_attribute("data-light") in {"amber", "red"}
        row = page.locator(f'#queues tr[data-queue="{DLQ}"]')  # type: ignore[attr-defined]
        playwright_api.expect(row).to_have_class("warn")
        playwright_api.expect(page.locator("#workers")).to_contain_text(worker.name.split("@")[0])  # type: ignore[attr-defined]
        # And the depth chart draws the DLQ's line once the management API has sampled it
        page.wait_for_selector(f'polyline[data-queue="{DLQ}"]')  # type: ignore[attr-defined]
        shoot(page, "overview")

        # When the operator opens the DLQ
        row.get_by_role("link", name=DLQ).click()

        # Then the dead letters are grouped by error and task, with their count
        group = page.locator("#groups tr.group")  # type: ignore[attr-defined]
        playwright_api.expect(group).to_have_count(1)
        playwright_api.expect(group.locator("td").nth(0)).to_have_text("ValueError")
        playwright_api.expect(group.locator("td").nth(1)).to_have_text("research.fragile")
        playwright_api.expect(group.locator(".count")).to_have_text("3")
        shoot(page, "dlq")

        # When a message is opened, its error and traceback are there to read
        page.locator("#messages tr.letter a").first.click()  # type: ignore[attr-defined]
        playwright_api.expect(page.locator("#error-type")).to_have_text("ValueError")  # type: ignore[attr-defined]
        playwright_api.expect(page.locator("#error-message")).to_contain_text("fault injected")  # type: ignore[attr-defined]
        playwright_api.expect(page.locator("#traceback")).to_contain_text("ValueError")  # type: ignore[attr-defined]
        playwright_api.expect(page.locator("#body")).to_contain_text("[")  # type: ignore[attr-defined]

        # When the fault is fixed and the group's replay is asked for
        fault.unlink()
        page.go_back()  # type: ignore[attr-defined]
        page.get_by_role("button", name="Replay group…").click()  # type: ignore[attr-defined]

        # Then a dry run comes first, and nothing has moved yet
        playwright_api.expect(page.locator("#replay-preview")).to_contain_text(  # type: ignore[attr-defined]
            "Would replay 3 of 3 examined message(s)"
        )
        assert queue_counts(ops_url, DLQ)[0] == 3

        # When the operator confirms
        page.get_by_role("button", name="Replay 3 message(s) to research.tasks").click()  # type: ignore[attr-defined]

        # Then the three go back, the DLQ is empty, and the tasks succeed
        playwright_api.expect(page.locator("#replay-done")).to_contain_text("Replayed 3 of 3")  # type: ignore[attr-defined]
        wait_for(
            lambda: all(app.AsyncResult(i).state == "SUCCESS" for i in ids), 60, 0.25,
            what="the three replayed tasks to succeed",
        )  # fmt: skip
        assert sorted(line for line in runs.read_text().splitlines() if line.startswith("ok")) == [
            "ok 0", "ok 1", "ok 2",
        ]  # fmt: skip
        page.get_by_role("link", name=f"← {DLQ}").click()  # type: ignore[attr-defined]
        playwright_api.expect(page.locator("#depth")).to_contain_text("0 dead letter(s)")  # type: ignore[attr-defined]
        assert queue_counts(ops_url, DLQ)[0] == 0

        # And the topology page shows the live vhost matching the code, with its picture
        page.get_by_role("link", name="Topology").click()  # type: ignore[attr-defined]
        playwright_api.expect(page.locator("#drift")).to_contain_text("matches the code")  # type: ignore[attr-defined]
        playwright_api.expect(page.locator(".picture svg .node")).to_have_count(  # type: ignore[attr-defined]
            len(page.locator(".picture svg .node").all())  # type: ignore[attr-defined]
        )
        shoot(page, "topology")


def test_a_script_in_a_dead_letter_is_shown_as_text_and_never_runs(
    ops_url: str, browser: object
) -> None:
    # Given a dead letter whose body, error message and type carry markup
    attack = "<script>window.kittyPwned = true</script>"
    dead_letter(
        ops_url, '{"payload": "' + attack + '"}',
        {"task": "research.<b>bold</b>", "id": "t-hostile", "x-kitty-error-type": "ValueError",
         "x-kitty-error-message": f"bad input {attack}<img src=x onerror=\"window.kittyPwned=1\">",
         "x-kitty-traceback": f"Traceback: {attack}"},
    )  # fmt: skip
    with running_console(ops_url) as console:
        page = open_page(browser, console)

        # When the operator reads the DLQ and then the message
        page.goto(f"/dlq/{DLQ}")  # type: ignore[attr-defined]
        playwright_api.expect(page.locator("#groups")).to_contain_text("research.<b>bold</b>")  # type: ignore[attr-defined]
        page.locator("#messages tr.letter a").first.click()  # type: ignore[attr-defined]

        # Then every piece of markup is visible as text, and none of it ran
        playwright_api.expect(page.locator("#body")).to_contain_text(attack)  # type: ignore[attr-defined]
        playwright_api.expect(page.locator("#error-message")).to_contain_text(attack)  # type: ignore[attr-defined]
        playwright_api.expect(page.locator("#traceback")).to_contain_text(attack)  # type: ignore[attr-defined]
        assert page.evaluate("window.kittyPwned === undefined")  # type: ignore[attr-defined]
        assert page.locator("main script, main img").count() == 0  # type: ignore[attr-defined]


def test_strangers_and_forged_posts_are_refused_and_nothing_moves(ops_url: str) -> None:
    # Given one dead letter and a running console
    dead_letter(ops_url, "[[1], {}, {}]", {"task": "research.fragile", "id": "t-1"})
    with running_console(ops_url) as console:
        import requests

        # When a request comes without credentials, or with a wrong password
        anonymous = requests.get(console.url("/dlq"), timeout=10)
        wrong = requests.get(console.url("/dlq"), auth=(USER, PASSWORD + "x"), timeout=10)

        # Then both get 401 and a basic-auth challenge, and no data
        for answer in (anonymous, wrong):
            assert answer.status_code == 401
            assert answer.headers["WWW-Authenticate"].startswith("Basic ")
            assert DLQ not in answer.text

        # When a logged-in POST carries no CSRF token
        forged = requests.post(
            console.url(f"/dlq/{DLQ}/replay"), auth=AUTH, timeout=10,
            data={"scope": "all", "confirmed": "yes"},
        )  # fmt: skip

        # Then it is refused with 403 and says why, and the dead letter stays
        assert forged.status_code == 403
        assert "CSRF token is missing or wrong" in forged.text
        assert queue_counts(ops_url, DLQ)[0] == 1

        # When purge is posted with its token but without the queue's name typed
        session, token = logged_in_session(console, f"/dlq/{DLQ}")
        untyped = session.post(
            console.url(f"/dlq/{DLQ}/purge"), data={"_xsrf": token, "confirm_name": "yes"}
        )

        # Then it is refused too, and nothing was deleted
        assert untyped.status_code == 400
        assert f"type the queue&#x27;s name, {DLQ}, to purge it" in untyped.text
        assert queue_counts(ops_url, DLQ)[0] == 1

        # And no page shows the broker's password
        for path in ("/", "/dlq", f"/dlq/{DLQ}", "/topology"):
            text = session.get(console.url(path)).text
            assert "guest:guest@" not in text
            assert ":**@" in text  # the URL is shown, its password masked

        # When the queue's name is typed, the purge goes through
        typed = session.post(
            console.url(f"/dlq/{DLQ}/purge"), data={"_xsrf": token, "confirm_name": DLQ}
        )
        assert typed.status_code == 200
        assert f"Deleted 1 message(s) from {DLQ}" in typed.text
        assert queue_counts(ops_url, DLQ)[0] == 0


def test_read_only_hides_replay_and_refuses_its_post(ops_url: str) -> None:
    # Given one dead letter and a read-only console
    dead_letter(ops_url, "[[1], {}, {}]", {"task": "research.fragile", "id": "t-1"})
    with running_console(ops_url, "--read-only") as console:
        # When the DLQ page is shown
        session, token = logged_in_session(console, f"/dlq/{DLQ}")
        page = session.get(console.url(f"/dlq/{DLQ}")).text

        # Then it has no replay or purge controls
        assert "Replay" not in page
        assert "Purge" not in page
        assert "read-only" in page

        # When a replay is posted anyway, with a valid token and confirmed
        answer = session.post(
            console.url(f"/dlq/{DLQ}/replay"),
            data={"_xsrf": token, "scope": "all", "confirmed": "yes"},
        )
        purge = session.post(
            console.url(f"/dlq/{DLQ}/purge"), data={"_xsrf": token, "confirm_name": DLQ}
        )

        # Then both are refused with 403 and a clear reason, and nothing moved
        for refused in (answer, purge):
            assert refused.status_code == 403
            assert "this console runs read-only (--read-only)" in refused.text
            assert "nothing was moved or deleted" in refused.text
        assert queue_counts(ops_url, DLQ)[0] == 1
        assert queue_counts(ops_url, "research.tasks")[0] == 0


def test_a_big_dlq_is_grouped_from_a_bounded_scan_and_its_list_paged(ops_url: str) -> None:
    # Given 120 dead letters of two errors, and a console that reads at most 100 of them
    with Connection(ops_url) as connection:
        producer = connection.Producer()
        for item in range(120):
            producer.publish(
                [[item], {}, {}], exchange="dlx", routing_key="research.tasks",
                headers={"task": "research.fragile", "id": f"t-{item}",
                         "x-kitty-error-type": "ValueError" if item % 2 else "KeyError"},
            )  # fmt: skip
    wait_for(lambda: queue_counts(ops_url, DLQ)[0] == 120, 10, 0.1, what="120 dead letters")
    with running_console(ops_url, "--scan-limit", "100") as console:
        session, _ = logged_in_session(console, "/dlq")

        # When the DLQ's page is shown
        first = session.get(console.url(f"/dlq/{DLQ}")).text

        # Then it counts all, groups the first 100, and lists 50 of them
        assert "<strong>120</strong> dead letter(s)" in first
        assert "Grouped from the first 100 (the scan limit)" in first
        assert first.count('class="letter"') == 50
        assert "page 1 of 2" in first

        # And the second page has the rest of the scanned ones; a page past the end is an error
        second = session.get(console.url(f"/dlq/{DLQ}?page=2")).text
        assert second.count('class="letter"') == 50
        past = session.get(console.url(f"/dlq/{DLQ}?page=3"))
        assert past.status_code == 400
        assert "page 3 is past the last page (2)" in past.text
        assert session.get(console.url(f"/dlq/{DLQ}?page=0")).status_code == 400

        # And a group's filter lists only its own
        keys = session.get(console.url(f"/dlq/{DLQ}?error_type=KeyError&type=research.fragile"))
        assert keys.text.count('class="letter"') == 50
        assert "ValueError</td>" not in keys.text.split('id="messages"')[1]

    # And nothing was moved by looking
    assert queue_counts(ops_url, DLQ)[0] == 120
