"""The tasks' shared store (services.taskstore): its bounds, expiry, owners and dead workers."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from services.taskstore import COMPLETED, FAILED, QueueFull, TaskStore, owner_of, process_start


def test_the_queue_is_bounded_and_a_finished_task_frees_its_place(tmp_path):
    store = TaskStore(tmp_path, queue=2)
    first = store.submit("sample", "", b"{}", total=10, unit="steps", per=4)
    store.submit("sample", "", b"{}", total=10, unit="steps")
    with pytest.raises(QueueFull, match="GENREG_TASK_QUEUE=2"):
        store.submit("sample", "", b"{}", total=10, unit="steps")
    assert store.start(first)
    store.progress(first, 9)
    assert store.get(first, "").as_dict()["progress"] == {"unit": "steps", "done": 2, "total": 10}
    store.finish(first, 200, b'{"ok": 1}', done=40)
    row = store.get(first, "")
    assert row.status == COMPLETED and row.code == 200 and row.as_dict()["progress"]["done"] == 10
    assert store.result_file(first).read_bytes() == b'{"ok": 1}'
    store.submit("sample", "", b"{}", total=1, unit="steps")  # the finished one's place


def test_a_canceled_task_stays_canceled_and_holds_its_place_until_its_worker_lets_go(tmp_path):
    store = TaskStore(tmp_path, queue=1)
    task = store.submit("score", "", b"{}", total=5, unit="rows")
    store.start(task)
    assert store.cancel(task, "").status == "canceled"
    assert not store.progress(task, 3)  # its worker learns it is no longer wanted
    with pytest.raises(QueueFull):
        store.submit("score", "", b"{}", total=5, unit="rows")
    store.finish(task, 200, b"{}")  # too late: stays canceled
    assert store.get(task, "").status == "canceled"
    store.submit("score", "", b"{}", total=5, unit="rows")


def test_another_owner_sees_nothing(tmp_path):
    store = TaskStore(tmp_path)
    alice, bob = owner_of(b"alice"), owner_of(b"bob")
    task = store.submit("sample", alice, b"{}", total=1, unit="steps")
    assert store.get(task, alice) is not None
    assert store.get(task, bob) is None and store.cancel(task, bob) is None
    assert store.get(task, alice).status == "pending"


def test_results_expire_and_the_oldest_go_first_past_the_byte_limit(tmp_path):
    store = TaskStore(tmp_path, ttl=0.5, max_bytes=250)
    ids = []
    for _ in range(3):
        task = store.submit("sample", "", b"{}", total=1, unit="steps")
        store.start(task)
        store.finish(task, 200, bytes(100))
        ids.append(task)
        time.sleep(0.01)
    store.sweep(force=True)
    assert store.get(ids[0], "") is None and not store.result_file(ids[0]).exists()  # 300 > 250 bytes
    assert store.get(ids[2], "") is not None
    time.sleep(0.6)
    store.sweep(force=True)
    assert store.get(ids[2], "") is None and not store.body_file(ids[2]).exists()


def test_a_task_of_a_worker_that_died_fails_with_the_reason(tmp_path):
    code = (
        "import sys; from pathlib import Path; from services.taskstore import TaskStore;"
        "s = TaskStore(Path(sys.argv[1])); t = s.submit('sample', '', b'{}', 1, 'steps'); s.start(t); print(t)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    task = done.stdout.strip()
    row = TaskStore(tmp_path).get(task, "")
    assert row.status == FAILED and row.code == 503 and "exited" in row.error


def test_process_start_tells_a_reused_pid_apart():
    import os

    assert process_start(os.getpid()) != "" and process_start(2**22 + 7) == ""


def test_a_queued_task_canceled_frees_its_place_at_once_and_a_failure_frees_it_too(tmp_path):
    store = TaskStore(tmp_path, queue=1)
    queued = store.submit("sample", "", b"{}", total=1, unit="steps")
    assert store.cancel(queued, "").status == "canceled"
    assert not store.start(queued)  # its worker will not run it
    running = store.submit("sample", "", b"{}", total=1, unit="steps")  # its place is free
    store.start(running)
    store.fail(running, "the task could not run: disk full")
    row = store.get(running, "")
    assert row.status == FAILED and row.code == 500 and "disk full" in row.error
    store.submit("sample", "", b"{}", total=1, unit="steps")
