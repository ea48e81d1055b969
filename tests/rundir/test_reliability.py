"""Unit tests of the crash-safety and security helpers: the run-dir lock, secret redaction, resume's file
handling, run names, and source-wide rules (safe YAML only, no shell strings)."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from dpo.config.loading import load_recipe
from dpo.config.schema import run_name_problem
from dpo.errors import UserError
from dpo.rundir.atomic import atomic_write_json, atomic_write_text
from dpo.rundir.files import append_metrics, metrics_rows, read_metrics
from dpo.rundir.lock import DirectoryLock, RunLock, _names
from dpo.rundir.resume import (
    COMPLETE_MARK,
    TRAINER_STATE,
    initial_metrics,
    last_resumable,
    mark_complete,
    rotate,
    truncate_metrics,
)
from dpo.rundir.secrets import RedactedCopy, RedactingStream, is_secret_name, redact, redact_data, secret_values
from tests.conftest import ARITHMETIC, REPO, read_jsonl, write_recipe

# ---- the lock -----------------------------------------------------------------------------------------


def test_second_writer_is_refused_and_lock_released(tmp_path):
    with RunLock(tmp_path) as first:
        held = json.loads(first.path.read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["started"]
        with pytest.raises(UserError, match=rf"in use by another dpo train \(pid {os.getpid()} on "):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary files left either


def _hold_lock_in_a_process(folder):
    """A process that takes `folder`'s lock and keeps it until killed."""
    code = (
        "import sys, time; from dpo.rundir.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    """The kernel drops the flock when its holder dies, even by SIGKILL: no pid checks, no stale-lock guessing."""
    holder = _hold_lock_in_a_process(tmp_path)
    try:
        who = rf"\(pid {holder.pid} on {re.escape(socket.gethostname())}, since "
        with pytest.raises(UserError, match=rf"^{re.escape(str(tmp_path))}: run directory is in use by .* {who}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own
        holder.wait()
        holder.stdout.close()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid  # its lock file is still there
    with RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def test_a_lock_on_a_released_and_removed_file_is_not_taken_for_the_directory(tmp_path):
    """A process that opened the lock file just before its holder released (and removed) it must not believe it
    holds the directory: the path no longer names the file it locked."""
    first = RunLock(tmp_path).acquire()
    opened_before_release = os.open(first.path, os.O_RDWR)
    first.release()
    try:
        fcntl.flock(opened_before_release, fcntl.LOCK_EX | fcntl.LOCK_NB)  # succeeds: nobody holds that old file
        assert not _names(tmp_path / ".lock", opened_before_release)
        with RunLock(tmp_path) as second:  # the directory's lock is a new file, free
            assert _names(second.path, second._fd)
    finally:
        os.close(opened_before_release)


def test_the_sweep_directory_uses_the_same_lock_with_its_own_message(tmp_path):
    from dpo.sweep.driver import IN_USE

    with DirectoryLock(tmp_path, IN_USE):
        with pytest.raises(UserError, match=r"another `dpo sweep` is running on this directory \(use --workers"):
            DirectoryLock(tmp_path, IN_USE).acquire()
        with pytest.raises(UserError, match="in use by another dpo train"):  # one lock file for either kind
            RunLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()


# ---- secrets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "secret"),
    [("WANDB_API_KEY", True), ("HF_TOKEN", True), ("AWS_SECRET_ACCESS_KEY", True), ("DB_PASSWORD", True),
     ("OPENAI_APIKEY", True), ("my_auth", True), ("MONKEY", False), ("TOKENIZERS_PARALLELISM", False),
     ("PATH", False), ("KEYBOARD", False), ("PASSWORD_STORE_DIR", False), ("CREDENTIALS_DIRECTORY", False),
     ("SSH_AUTH_SOCK", False), ("AWS_WEB_IDENTITY_TOKEN_FILE", False), ("KEY_PATH_TOKEN", True), ("_KEY_", True),
     ("PGPASSWORD", True), ("MYSQL_PWD", True), ("DB_PWD", True), ("PWD", False), ("OLDPWD", False),
     ("PGPASSFILE", False)],
)  # fmt: skip
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


def test_a_pwd_variable_holding_a_folder_is_no_secret():
    """DB_PWD is a password; HOST_PWD=$PWD (a container's working directory) is a folder, which redacting would
    strip from every path (and refuse every run under it)."""
    env = {"DB_PWD": "hunter2hunter2", "HOST_PWD": "/home/me/project", "PWD": "/home/me/project"}
    assert secret_values(env) == [("DB_PWD", "hunter2hunter2")]


def test_redaction_replaces_values_of_secret_variables_only():
    env = {
        "HF_TOKEN": "hf_abcdefgh12345",
        "WANDB_API_KEY": "0123456789abcdef0123",
        "SHORT_KEY": "1",
        "HOME": "/home/me",
    }
    text = "token hf_abcdefgh12345 in /home/me, key=0123456789abcdef0123, step 1"
    assert redact(text, env) == "token [redacted $HF_TOKEN] in /home/me, key=[redacted $WANDB_API_KEY], step 1"
    assert [name for name, _ in secret_values(env)] == ["WANDB_API_KEY", "HF_TOKEN"]  # longest first, short ignored
    nested = {"a": ["x hf_abcdefgh12345", 1.5, None], "hf_abcdefgh12345": {"b": "clean"}}
    assert redact_data(nested, env) == {
        "a": ["x [redacted $HF_TOKEN]", 1.5, None],
        "[redacted $HF_TOKEN]": {"b": "clean"},
    }


def test_the_password_of_a_url_in_any_variable_is_a_secret_but_the_rest_of_the_url_is_not():
    """A sweep's database URL reaches each trial in DPO_SWEEP_STORAGE, a name that does not look secret: its
    password is redacted wherever it appears, as written in the URL and percent-decoded; host and user stay."""
    env = {
        "DPO_SWEEP_STORAGE": "postgresql://alice:pa%40ss-word-42@db-host:5432/sweeps",
        "DATABASE_URL": "mysql://bob:tiny@db/x",  # too short to be a real credential: left alone
        "HOMEPAGE": "https://user@example.org/path",  # a user, no password
        "NOT_A_URL": "a@b:c",
    }
    assert secret_values(env) == [("DPO_SWEEP_STORAGE", "pa%40ss-word-42"), ("DPO_SWEEP_STORAGE", "pa@ss-word-42")]
    text = "cannot open postgresql://alice:pa%40ss-word-42@db-host:5432/sweeps (password pa@ss-word-42)"
    assert redact(text, env) == (
        "cannot open postgresql://alice:[redacted $DPO_SWEEP_STORAGE]@db-host:5432/sweeps "
        "(password [redacted $DPO_SWEEP_STORAGE])"
    )
    buffer = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DPO_SWEEP_STORAGE", env["DPO_SWEEP_STORAGE"])
        RedactingStream(buffer).write(text)  # the stream looks the secrets up once and reuses them
    assert "pa@ss" not in buffer.getvalue() and "pa%40ss" not in buffer.getvalue()
    assert buffer.getvalue().count("[redacted $DPO_SWEEP_STORAGE]") == 2


@pytest.mark.parametrize(
    "value, secrets, redacted",
    [
        # the password is also the user and part of the scheme: redacted with its user, the rest stays readable
        (
            "postgresql://postgres:postgres@localhost/db",
            ["postgres:postgres"],
            "postgresql://[redacted $X]@localhost/db",
        ),
        # not at the value's start (a command line), two URLs in one value, a host urlsplit cannot parse
        ("--storage=postgresql://al:pw-0123456@h/db", ["pw-0123456"], "--storage=postgresql://al:[redacted $X]@h/db"),
        (
            "redis://:first-pass-1@h1,redis://:second-pass@h2",
            ["second-pass", "first-pass-1"],
            "redis://:[redacted $X]@h1,redis://:[redacted $X]@h2",
        ),
        ("postgresql://u:pw-0123456@[zz]/x", ["pw-0123456"], "postgresql://u:[redacted $X]@[zz]/x"),
        ("postgresql://u:pw-0123456@[::1]:5432/x", ["pw-0123456"], "postgresql://u:[redacted $X]@[::1]:5432/x"),
        # Azure's user@server user name; a password that is also the database's name is redacted everywhere
        (
            "postgresql://admin@srv:pw-0123456@srv.example/db",
            ["pw-0123456"],
            "postgresql://admin@srv:[redacted $X]@srv.example/db",
        ),
        ("postgresql://u:sweeps-db@h/sweeps-db", ["sweeps-db"], "postgresql://u:[redacted $X]@h/[redacted $X]"),
        ("a" * 200_000, [], "a" * 200_000),  # no URL; linear time (a regex that rescans hangs here for a minute)
    ],
)
def test_url_passwords_wherever_the_url_stands_and_without_mangling_the_url(value, secrets, redacted):
    assert sorted(v for _, v in secret_values({"X": value})) == sorted(secrets)
    assert redact(value, {"X": value}) == redacted
    assert redact("the postgres server; postgresql", {"X": value}) == "the postgres server; postgresql"


def test_redacting_stream_and_run_files(monkeypatch, tmp_path):
    import io

    monkeypatch.setenv("MY_SERVICE_TOKEN", "s3cr3t-value-9876")
    buffer = io.StringIO()
    RedactingStream(buffer).write("using s3cr3t-value-9876 now\n")
    assert buffer.getvalue() == "using [redacted $MY_SERVICE_TOKEN] now\n"
    atomic_write_json(tmp_path / "summary.json", {"path": "/data/s3cr3t-value-9876/train.jsonl"})
    assert "s3cr3t" not in (tmp_path / "summary.json").read_text()


def test_redacting_stream_redacts_binary_writes_and_keeps_bytes_that_are_not_text(monkeypatch):
    import io

    monkeypatch.setenv("MY_SERVICE_TOKEN", "s3cr3t-value-9876")
    raw = io.BytesIO()
    stream = RedactingStream(io.TextIOWrapper(raw, encoding="utf-8"))
    data = b"token s3cr3t-value-9876, then a byte that is not UTF-8: \xff\n"
    assert stream.buffer.write(data) == len(data)  # what a binary stream's write returns: the bytes it was given
    assert raw.getvalue() == b"token [redacted $MY_SERVICE_TOKEN], then a byte that is not UTF-8: \xff\n"
    assert stream.buffer.getvalue() == raw.getvalue()  # anything else is the wrapped binary stream's own
    stream.buffer.writelines([b"again s3cr3t-value-9876\n"])
    stream.writelines(["and s3cr3t-value-9876\n"])
    stream.flush()
    assert b"s3cr3t" not in raw.getvalue() and raw.getvalue().count(b"[redacted $MY_SERVICE_TOKEN]") == 3
    with pytest.raises(TypeError):
        stream.buffer.write("text, not bytes")


def test_redacting_stream_sees_a_secret_written_in_pieces_and_releases_what_was_not_one(monkeypatch):
    class KeptAtClose(io.StringIO):
        def close(self):
            if not self.closed:
                self.kept = self.getvalue()
            super().close()

    monkeypatch.setenv("MY_SERVICE_TOKEN", "s3cr3t-value-9876")
    out = KeptAtClose()
    stream = RedactingStream(out)
    for piece in ["token s3", "cr3t-val", "ue-9876 and s3cr", "3t-value-9876!\n"]:  # over two and three writes
        assert stream.write(piece) == len(piece)
    assert out.getvalue() == "token [redacted $MY_SERVICE_TOKEN] and [redacted $MY_SERVICE_TOKEN]!\n"
    stream.write("not a secret: s3cr")  # could still become one: held back...
    assert out.getvalue().endswith("not a secret: ")
    stream.write("ew")  # ...until the next write shows it is not
    assert out.getvalue().endswith("not a secret: s3crew")
    stream.write("ends with s3c")
    stream.flush()  # a flush writes out what is held back
    assert out.getvalue().endswith("ends with s3c")
    stream.write("and s3")
    stream.close()  # so does closing, once
    stream.close()
    assert out.closed and out.kept.endswith("ends with s3cand s3")


def test_redacting_stream_bytes_in_pieces_keep_their_order_with_text(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "s3cr3t-value-9876")
    monkeypatch.setenv("MY_DB_PASSWORD", "pässwörd-12345")

    class KeptAtClose(io.BytesIO):
        def close(self):
            if not self.closed:
                self.kept = self.getvalue()
            super().close()

    raw = KeptAtClose()
    stream = RedactingStream(io.TextIOWrapper(raw, encoding="utf-8", write_through=True))  # as a terminal's
    stream.buffer.write(b"bytes s3cr3t-")  # the binary side holds back its own end, across `.buffer` objects
    stream.buffer.write(b"value-9876 then s3")
    assert raw.getvalue() == b"bytes [redacted $MY_SERVICE_TOKEN] then "
    stream.write("text\n")  # what the bytes held back comes first
    assert raw.getvalue() == b"bytes [redacted $MY_SERVICE_TOKEN] then s3text\n"
    password = "pässwörd-12345".encode()
    stream.buffer.write(b"db " + password[:2])  # split inside the two bytes of "\xe4"
    stream.buffer.write(password[2:] + b" ok\n")
    stream.buffer.write(b"not UTF-8: \xff\xc3")  # kept as they are, the lone lead byte too
    stream.buffer.close()  # closing writes out what is held back, once
    stream.buffer.close()
    assert raw.kept.endswith(b"then s3text\ndb [redacted $MY_DB_PASSWORD] ok\nnot UTF-8: \xff\xc3")


def test_redacting_stream_holds_a_secret_that_another_starts_or_runs_into(monkeypatch):
    monkeypatch.setenv("API_KEY", "abcdefgh")
    monkeypatch.setenv("API_KEY_FULL", "abcdefgh-and-more")
    monkeypatch.setenv("OTHER_TOKEN", "12345678")
    monkeypatch.setenv("LAST_TOKEN", "5678wxyz")
    out = io.StringIO()
    stream = RedactingStream(out)
    stream.write("x abcdefgh")  # a whole secret, and the start of a longer one
    stream.write("-and-more\n")
    stream.write("y 12345678")  # a whole secret, whose end starts another
    stream.write("\n")
    assert out.getvalue() == "x [redacted $API_KEY_FULL]\ny [redacted $OTHER_TOKEN]\n"


def test_held_back_output_is_written_at_interpreter_exit_and_not_twice_after_a_fork():
    script = """
import os, sys, threading
from dpo.rundir.secrets import redact_standard_streams
redact_standard_streams()
sys.stdout.write('token s3cr3t-va')
sys.stdout.write('lue-9876, last s3cr')
sys.stderr.buffer.write(b'bytes s3cr3t-value-9876, last s3')
holding, done = threading.Event(), threading.Event()
def hold_the_lock():  # a thread that is printing while the process forks
    with sys.stdout._lock:
        holding.set()
        done.wait()
threading.Thread(target=hold_the_lock).start()
holding.wait()
sys.stdout._stream.flush()  # what was written out so far, not what is held back
pid = os.fork()
if pid == 0:
    import signal
    signal.alarm(20)  # a child that hangs on the lock dies of it
    sys.stdout.write(' child')
    sys.stdout.flush()
    os._exit(0)
done.set()
_, status = os.waitpid(pid, 0)
sys.stdout.write(' child exit %d' % os.waitstatus_to_exitcode(status))
"""
    env = {**os.environ, "MY_SERVICE_TOKEN": "s3cr3t-value-9876"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=True, cwd=REPO)
    assert done.stdout == b"token [redacted $MY_SERVICE_TOKEN], last  childs3cr child exit 0"  # "s3cr" once
    assert done.stderr == b"bytes [redacted $MY_SERVICE_TOKEN], last s3"


def test_a_childs_output_copied_redacted_even_what_it_writes_to_its_file_descriptors(tmp_path):
    """What a child writes with os.write (as C extensions do) never passes through a RedactingStream of its own:
    the copy of its pipe redacts it, a secret split between two writes included, with the child's environment's
    secrets (the sweep gives its trials the storage URL there), and keeps bytes that are not UTF-8."""
    env = {**os.environ, "TRIAL_API_KEY": "s3cr3t-value-9876"}
    child = (
        "import os, time; os.write(1, b'token s3cr3t-'); time.sleep(0.3); os.write(1, b'value-9876 end\\n');"
        " os.write(2, b'on stderr s3cr3t-value-9876 \\xff\\n')"
    )
    log_path = tmp_path / "train.log"
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        copy = RedactedCopy(proc.stdout, log, env)
        assert proc.wait(timeout=60) == 0
        assert copy.finish() is True
    assert log_path.read_bytes() == (b"token [redacted $TRIAL_API_KEY] end\non stderr [redacted $TRIAL_API_KEY] \xff\n")
    assert "TRIAL_API_KEY" not in os.environ  # the child's environment, not ours, named the secret


def test_a_redacted_copy_stops_for_a_process_the_child_left_writing_to_its_pipe(tmp_path):
    """A process the child started and left running (wandb's service, say) may hold the pipe open and keep writing:
    finish() stops copying after linger_s even while it writes, says the pipe did not close, and closes our end, so
    that the writer's next write fails (it ends on the broken pipe)."""
    import threading
    import time

    writer = "import sys, time\nfor _ in range(2400): sys.stdout.write('more\\n'); sys.stdout.flush(); time.sleep(0.05)"
    child = (
        f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {writer!r}]); print(p.pid, flush=True)"
    )
    log_path = tmp_path / "train.log"
    writer_pid = None
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        copy = RedactedCopy(proc.stdout, log)
        try:
            assert proc.wait(timeout=60) == 0
            for _ in range(600):  # until the writer has written (it starts a Python of its own first)
                if "more" in log_path.read_text():
                    break
                time.sleep(0.1)
            writer_pid = int(log_path.read_text().split()[0])
            result = []
            finishing = threading.Thread(target=lambda: result.append(copy.finish(linger_s=0.5)))
            finishing.start()
            finishing.join(timeout=60)  # the writer would go on for two minutes: finish() must not wait for it
            assert not finishing.is_alive() and result == [False]
        finally:
            if writer_pid is not None:  # it may be gone already (the broken pipe) and reaped: nothing to kill
                with contextlib.suppress(ProcessLookupError):
                    os.kill(writer_pid, 9)
            copy.finish(linger_s=0)
    assert log_path.read_text().split()[1] == "more"


def test_a_redacted_copy_that_cannot_write_still_drains_the_pipe(tmp_path):
    """A write that fails (a full disk) must not leave the child blocked on a full pipe: the copy reads the rest,
    drops it, and keeps the error."""

    class FullDisk(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            raise OSError(28, "No space left on device")

    target = io.TextIOWrapper(io.BufferedWriter(FullDisk()), encoding="utf-8")
    child = "import sys; sys.stdout.write('x' * 1_000_000); sys.stdout.flush()"  # far more than a pipe holds
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE)
    copy = RedactedCopy(proc.stdout, target)
    try:
        assert proc.wait(timeout=60) == 0  # not blocked
        assert copy.finish() is True
        assert isinstance(copy.error, OSError) and copy.error.errno == 28
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        copy.finish(linger_s=0)
        with contextlib.suppress(OSError):
            target.close()


def test_standard_streams_are_wrapped_for_redaction_once(capsys, monkeypatch):  # capsys set up first, torn down last
    import sys

    from dpo.rundir.secrets import redact_standard_streams

    monkeypatch.setenv("MY_SERVICE_TOKEN", "s3cr3t-value-9876")
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # restored after the test
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    redact_standard_streams()
    wrapped = sys.stdout
    redact_standard_streams()  # the CLI's entry point, then `dpo train`: the second call changes nothing
    assert sys.stdout is wrapped and isinstance(wrapped, RedactingStream)
    assert not isinstance(wrapped._stream, RedactingStream)
    print("token s3cr3t-value-9876")
    assert capsys.readouterr().out == "token [redacted $MY_SERVICE_TOKEN]\n"
    monkeypatch.setenv("OTHER_API_KEY", "an0ther-s3cret-42")  # set after the wrap: the next call learns it
    redact_standard_streams()
    print("key an0ther-s3cret-42")
    assert sys.stdout is wrapped and capsys.readouterr().out == "key [redacted $OTHER_API_KEY]\n"


# ---- atomic writes and resume's files -----------------------------------------------------------------


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_two_writers_of_one_file_at_once_never_fail_and_leave_one_whole_file(tmp_path):
    """`dpo report` writing report.html while the run writes it: each write has its own temporary file, so neither
    fails (the temporary name was shared: one truncated the other's, one rename found nothing) and the file is one
    writer's text whole. The file gets the usual permissions, not the temporary file's private 0600."""
    import stat
    import threading

    target = tmp_path / "report.html"
    texts = ["a" * 50_000, "b" * 60_000]
    errors = []

    def write(text):
        try:
            for _ in range(200):
                atomic_write_text(target, text)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and target.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    old_mask = os.umask(0o022)
    try:
        atomic_write_text(target, "x")
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_truncate_metrics_drops_later_steps_torn_line_and_end_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 0, "eval_loss": 1}, {"step": 1, "loss": 1}, {"step": 2, "loss": 1}, {"step": 2, "eval_loss": 1},
             {"step": 2, "train_runtime": 3.0}, {"step": 3, "loss": 1}]  # fmt: skip
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 4, "lo')  # killed mid-line
    assert truncate_metrics(path, 2) == 3
    assert read_jsonl(path) == lines[:4]


def test_metrics_file_round_trip_torn_last_line_and_a_broken_row(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_metrics(path, {"step": 1, "loss": float("nan"), "grad_norm": float("inf"), "lr": 0.5})
    append_metrics(path, {"step": 2, "loss": 0.25})
    assert path.read_text().splitlines()[0] == '{"step": 1, "loss": "nan", "grad_norm": "inf", "lr": 0.5}'
    with path.open("a") as handle:
        handle.write('{"step": 3, "lo')  # killed mid-line
    events = read_metrics(tmp_path)
    assert [e["step"] for e in events] == [1, 2]
    assert math.isnan(events[0]["loss"]) and events[0]["grad_norm"] == math.inf
    assert initial_metrics(tmp_path) == {}
    path.write_text('{"step": 0, "eval_loss": "nan"}\n[1]\n{"step": 2}\n')
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: row 2: not a JSON object$"):
        metrics_rows(path)  # strict, as resume reads it; read_metrics (reports) skips the row with a warning
    assert [e["step"] for e in read_metrics(tmp_path)] == [0, 2]
    path.write_text('{"step": 0, "eval_loss": 1.5}\n{"step": 1, "lo\n{"step": 2}\n')
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: row 2: not valid JSON"):
        truncate_metrics(path, 1)
    assert read_metrics(tmp_path / "absent") == []


def _checkpoint(folder, step, complete=True, state=True):
    """A checkpoint with every file a resume loads (tiny stand-ins that `unloadable` reads as sound), or with only the
    weights (`state=False`: the untrained checkpoint-0 that early stopping keeps)."""
    import torch
    from safetensors.torch import save_file

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text("{}")
    if state:
        for name in (TRAINER_STATE, "dpo_state.json"):
            (path / name).write_text("{}")
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            torch.save({}, path / name)
    if complete:
        mark_complete(path, step)
    return path


def test_last_resumable_skips_incomplete_and_weights_only_checkpoints(tmp_path):
    _checkpoint(tmp_path, 0, state=False)  # the untrained model kept as best: weights only
    assert last_resumable(tmp_path) is None
    good = _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 4, complete=False)  # cut off mid-save
    assert last_resumable(tmp_path) == (2, good)


def test_rotation_keeps_the_newest_and_the_best(tmp_path):
    paths = {s: _checkpoint(tmp_path, s) for s in (2, 4, 6, 8)}
    rotate(tmp_path, 2, protect=paths[2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-6", "checkpoint-8"]
    assert all((p / COMPLETE_MARK).is_file() for p in tmp_path.iterdir())


def test_rotation_keeps_the_best_however_its_path_is_spelled(tmp_path, monkeypatch):
    """A resume reads the best checkpoint's path back as the first attempt spelled it (runs/r/..., relative) while
    the folder is now absolute, or the reverse: the best survives either way."""
    from dpo.training.callbacks import BestCheckpointCallback

    folder = tmp_path / "runs" / "r" / "checkpoints"
    folder.mkdir(parents=True)
    for step in (2, 4, 6, 8):
        _checkpoint(folder, step)
    monkeypatch.chdir(tmp_path)
    rotate(folder, 2, protect="runs/r/checkpoints/checkpoint-2")
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-2", "checkpoint-6", "checkpoint-8"]
    rotate(Path("runs/r/checkpoints"), 1, protect=str(folder / "checkpoint-2"))
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-2", "checkpoint-8"]
    best = BestCheckpointCallback("eval_loss", keep_best=True)  # what the trainer protects: the callback's own best
    assert best.best_checkpoint(folder) is None  # nothing evaluated yet
    best.best_step = 2
    assert best.best_checkpoint(folder) == folder / "checkpoint-2"
    assert BestCheckpointCallback("eval_loss").best_checkpoint(folder) is None  # keep_best off: nothing kept


# ---- names, recipes, sources --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "..", ".", "", "a\\b"])
def test_run_names_cannot_escape_the_output_dir(name, tmp_path):
    assert run_name_problem(name)
    recipe = write_recipe(tmp_path / "r.yaml", {"name": name, "data": {"train": str(ARITHMETIC / "train.jsonl")}})
    with pytest.raises(UserError, match=rf"^{re.escape(str(recipe))}: name: "):
        load_recipe(recipe)


@pytest.mark.parametrize("name", ["run", "beta-0.1", "trial-0003", "my run"])
def test_plain_names_are_fine(name):
    assert run_name_problem(name) is None


def test_trust_remote_code_is_off_by_default_and_warned_about(tmp_path):
    from dpo.training.gate import CheckedRecipe

    recipe = write_recipe(tmp_path / "r.yaml", {"data": {"train": str(ARITHMETIC / "train.jsonl")}})
    assert load_recipe(recipe).recipe.model.trust_remote_code is False
    loaded = load_recipe(recipe, ["model.trust_remote_code=true"])
    data = SimpleNamespace(card={"split": {"prompts_in_both": 0}})  # held-out prompts apart from training ones
    (warning,) = CheckedRecipe(loaded, data, None, None, tmp_path).warnings
    assert warning.startswith("--set: model.trust_remote_code: true: Python code shipped with the model")


SOURCES = sorted([*(REPO / "dpo").rglob("*.py"), *(REPO / "eval").rglob("*.py"), *(REPO / "scripts").rglob("*.py")])


@pytest.mark.parametrize(
    "pattern",
    [r"shell\s*=\s*True", r"\bos\.system\(", r"\bos\.popen\(", r"subprocess\.getoutput", r"yaml\.unsafe_load",
     r"yaml\.full_load", r"yaml\.load\((?![^)]*Loader=_SafeLoader)", r"Loader=yaml\.(Unsafe|Full)?Loader"],
)  # fmt: skip
def test_no_shell_strings_and_no_unsafe_yaml_in_the_sources(pattern):
    """Processes are launched with argument lists, never through a shell; YAML is read with the safe loader only."""
    offenders = [str(p.relative_to(REPO)) for p in SOURCES if re.search(pattern, p.read_text(encoding="utf-8"))]
    assert offenders == []


@pytest.mark.slow
def test_secrets_never_reach_the_run_directory_or_the_console(tiny_recipe, tmp_path):
    """A secret-named environment variable whose value appears in the data path (as a token in a URL-like path
    would): `dpo train` prints and writes it nowhere, and warns about trust_remote_code."""
    import shutil

    secret = "s3cr3t-value-9876-abcdef"
    data_dir = tmp_path / f"data-{secret}"
    data_dir.mkdir()
    shutil.copy(ARITHMETIC / "train.jsonl", data_dir / "train.jsonl")
    run_dir = tmp_path / "run"
    overrides = ["training.max_steps=2", "training.eval_steps=1", f"data.train={data_dir / 'train.jsonl'}",
                 "model.trust_remote_code=true"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "dpo", "train", str(tiny_recipe), "--output-dir", str(run_dir),
         *(arg for o in overrides for arg in ("--set", o))],
        capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, "MY_SERVICE_TOKEN": secret},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: --set: model.trust_remote_code: true" in proc.stderr
    assert secret not in proc.stdout + proc.stderr
    assert "[redacted $MY_SERVICE_TOKEN]" in (run_dir / "recipe.yaml").read_text()
    leaked = [str(p) for p in run_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []
