"""Keep secrets out of run directories, reports and logs.

A secret is the value of an environment variable whose name looks like one (WANDB_API_KEY, HF_TOKEN,
AWS_SECRET_ACCESS_KEY, DB_PASSWORD, ...; not one that names where a secret is kept, PASSWORD_STORE_DIR), or the
password inside a URL any variable holds (DPO_SWEEP_STORAGE=postgresql://user:PASSWORD@host/db, DATABASE_URL, ...).
Everything we write into a run directory (recipe.yaml, summary.json, data_card.json, metrics.jsonl) and everything
`dpo train` prints passes through `redact`, which replaces each such value by `[redacted $NAME]`. Values shorter than
MIN_SECRET_LENGTH are left alone: they are not real credentials, and redacting e.g. "1" would mangle every number.
"""

from __future__ import annotations

import codecs
import os
import re
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote

from dpo.errors import UserError

# Words that mark a variable as secret; matched as parts of the name split on '_' (so MONKEY is not a KEY).
SECRET_NAME_WORDS = (
    "KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "PWD", "CREDENTIAL", "CREDENTIALS", "AUTH",
)  # fmt: skip
# ... or as the end of a name without '_': OPENAI_APIKEY, PGPASSWORD (PostgreSQL's client reads it), GITHUBTOKEN
SECRET_NAME_ENDINGS = ("APIKEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE")
# The shell's working directories, not passwords (MYSQL_PWD, DB_PWD are)
NOT_SECRET_NAMES = ("PWD", "OLDPWD")
# A name ending in one of these holds where a secret is, not the secret: PASSWORD_STORE_DIR, CREDENTIALS_DIRECTORY
# (systemd), SSH_AUTH_SOCK, AWS_WEB_IDENTITY_TOKEN_FILE. Taken for secrets, their folders would be redacted from
# every path in a log, and no run directory could be made under them.
LOCATION_NAME_WORDS = ("DIR", "DIRECTORY", "PATH", "FILE", "SOCK", "SOCKET", "HOME")
MIN_SECRET_LENGTH = 8


def is_secret_name(name: str) -> bool:
    parts = [part for part in re.split(r"[^A-Za-z0-9]+", name.upper()) if part]
    if parts and parts[-1] in LOCATION_NAME_WORDS or name.upper() in NOT_SECRET_NAMES:
        return False
    return any(word in parts for word in SECRET_NAME_WORDS) or name.upper().endswith(SECRET_NAME_ENDINGS)


def _a_working_directory(name: str, value: str) -> bool:
    """HOST_PWD=/home/me/work (a container's `-e HOST_PWD=$PWD`) names a folder, not a password: taken for a secret,
    every run under that folder would be refused and the folder redacted from every path."""
    return name.upper().rsplit("_", 1)[-1] == "PWD" and os.path.isabs(value)


Secrets = list[tuple[str, str]]  # (variable name, secret value) pairs, as `secret_values` gives them


def secret_values(env: Mapping[str, str] | None = None) -> Secrets:
    """(name, value) of the secret-looking variables in `env` (default: the process environment), and (name,
    password) of each URL with a password there; longest value first so that a secret containing another is
    replaced whole."""
    env = os.environ if env is None else env
    found = [(k, v) for k, v in env.items() if is_secret_name(k) and not _a_working_directory(k, v)]
    for name, value in env.items():
        for password in url_passwords(value):  # as written in the URL and as a program decodes it
            found.append((name, password))
    found = [(k, v) for k, v in dict.fromkeys(found) if len(v.strip()) >= MIN_SECRET_LENGTH]
    return sorted(found, key=lambda item: -len(item[1]))


# scheme://user:password@ anywhere in a value (after "--storage=", one of several comma-separated URLs). The user
# runs to the first ':' (it may hold an '@': Azure's user@server), the password to the last '@' before a '/', '?',
# '#' or a space; a password holding one of those must be percent-encoded to be seen. The look-behind starts a
# scheme only at the start of a word: without it each letter of a long token restarts the scan (quadratic time).
URL_CREDENTIALS = re.compile(
    r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://(?P<user>[^\s/?#:]*):(?P<password>[^\s/?#]*)@"
)


def secret_in(text: str, env: Mapping[str, str] | None = None) -> str | None:
    """The name of the first variable whose secret `text` holds, or None: for what must not hold one (a folder
    that files would be written into, a name an optuna storage records as it is)."""
    for name, value in secret_values(env):
        if value in text:
            return name
    return None


def set_it_again(name: str, now: str = "is not set now") -> str:
    """The advice where a run's recipe.yaml holds the value of $`name` redacted and `name` cannot give it back now
    (`now`: 'is not set now', 'holds no secret now')."""
    return f"{name} {now}: set it as it was when the run was made, and resume again"


def url_passwords(value: str) -> list[str]:
    """The password of each URL with credentials in `value` (scheme://user:password@host/...), percent-encoded
    and decoded; none for any other value. A database URL is secret only in this part: the host and user stay
    readable. A password that also occurs in its URL's scheme or user (postgresql://postgres:postgres@host) is
    redacted as `user:password`, so that every "postgres" in a log is not mangled; passwords shorter than
    MIN_SECRET_LENGTH are left alone, as other secrets are."""
    found = []
    for match in URL_CREDENTIALS.finditer(value):
        user, raw = match["user"], match["password"]
        if len(unquote(raw).strip()) < MIN_SECRET_LENGTH:
            continue
        scheme_and_user = value[match.start() : match.start("password")]
        ambiguous = any(form in scheme_and_user for form in (raw, unquote(raw)))
        found += [f"{user}:{form}" if ambiguous else form for form in (raw, unquote(raw))]
    return list(dict.fromkeys(found))


def redact(text: str, env: Mapping[str, str] | None = None, secrets: Secrets | None = None) -> str:
    """`text` with each secret of `env` replaced by its variable's name; `secrets`: those pairs, when the caller
    has already looked them up (a stream that redacts every write)."""
    for name, value in secret_values(env) if secrets is None else secrets:
        if value in text:
            text = text.replace(value, f"[redacted ${name}]")
    return text


# How `redact` writes a secret: "[redacted $NAME]", NAME the variable that held it
REDACTED = re.compile(r"\[redacted \$([^\]\s]+)\]")


def restore_redacted(data: dict, where: str, env: Mapping[str, str] | None = None) -> dict:
    """A run directory's recipe (its recipe.yaml, read as a mapping) with each "[redacted $NAME]" put back from the
    environment (`env`, default: the process environment), for `dpo train --resume RUN_DIR`, in memory only: the
    resumed run writes its recipe.yaml redacted again. NAME not set, or holding no secret now, is a UserError naming
    the variable and the key (`where`: the file), never a value. A variable that holds several secrets (a URL's
    password, written percent-encoded and decoded) cannot say which one the marker stood for: an error too."""
    secrets = secret_values(env)
    environment = os.environ if env is None else env

    def value_of(name: str, key: str) -> str:
        found = list(dict.fromkeys(value for variable, value in secrets if variable == name))
        if len(found) == 1:
            return found[0]
        if not found:
            why = set_it_again(name, "is not set now" if not environment.get(name) else "holds no secret now")
        else:
            why = (
                f"{name} holds {len(found)} secrets now (a URL's password), and recipe.yaml does not say which one: "
                f"resume with the recipe file the run was made with (dpo train RECIPE --resume --output-dir RUN_DIR)"
            )
        raise UserError(f"{key}: holds the value of ${name}, redacted, and {why}", where=where)

    def walk(value, key: str):
        if isinstance(value, str) and REDACTED.search(value):
            return REDACTED.sub(lambda match: value_of(match[1], key), value)
        if isinstance(value, dict):
            return {k: walk(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{key}[{i}]") for i, v in enumerate(value)]
        return value

    return walk(data, "")


def redact_data(data, env: Mapping[str, str] | None = None, secrets: Secrets | None = None):
    """`redact` applied to every string (and path) inside nested dicts / lists; keys too."""
    secrets = secret_values(env) if secrets is None else secrets
    if not secrets:
        return data

    def walk(value):
        if isinstance(value, str | Path):
            return redact(str(value), secrets=secrets) if any(s in str(value) for _, s in secrets) else value
        if isinstance(value, Mapping):
            return {walk(k): walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        return value

    return walk(data)


def redact_config(tree, env: Mapping[str, str] | None = None):
    """A config for a logger that sends it off the machine (wandb): the value of every mapping key named like a
    secret (`is_secret_name`, e.g. `hub_token`, `api_key`) replaced by "<redacted>", then `redact_data`."""

    def walk(value):
        if isinstance(value, Mapping):
            return {k: "<redacted>" if is_secret_name(str(k)) else walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        return value

    return redact_data(walk(tree), env)


def unfinished_secret_start(text: str, secrets: Secrets) -> int:
    """Where the end of `text` that a stream holds back starts (len(text): nothing to hold): the earliest end that
    could be the start of a secret the next write finishes, moved back to the start of any secret that runs into it
    (a secret may begin with another). Held back until the next write or a flush, a secret written in pieces is
    still seen whole."""
    cut = len(text)
    for _, value in secrets:  # only where a secret's first character is: a write costs the secrets' length, not more
        start = text.find(value[0], max(0, len(text) - len(value) + 1))
        while start != -1 and not value.startswith(text[start:]):
            start = text.find(value[0], start + 1)
        if start != -1:
            cut = min(cut, start)
    moved = cut < len(text)
    while moved:
        moved = False
        for _, value in secrets:
            start = text.find(value, max(0, cut - len(value) + 1))
            if start != -1 and start < cut:
                cut, moved = start, True
    return cut


class RedactingStream:
    """A text stream wrapper that redacts secrets from everything written through it (stdout / stderr) and through
    its `.buffer`.

    A write that ends with what could be the start of a secret keeps that end back until the next write or a flush
    (only one side, text or bytes, holds anything at a time, so their order is kept). The interpreter flushes
    sys.stdout and sys.stderr at a normal exit, as print(flush=True), input(), logging, typer and progress bars do
    after each message; with unbuffered output (`python -u`) a line's last characters may show a write late."""

    def __init__(self, stream, env: Mapping[str, str] | None = None):
        self._stream = stream
        self._env = env  # None: the process environment, looked up again at each refresh
        self._unfinished = {"text": "", "bytes": ""}  # each side's held-back end, unredacted (bytes: decoded)
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")  # bytes may split a character
        self._lock = threading.RLock()  # threads that print at once must not both write out one held-back end
        _STREAMS.add(self)
        self.refresh()

    def refresh(self) -> None:
        """Take the secrets from `env` (given at construction) or else from the process environment, as it is now."""
        self._secrets = secret_values(self._env)

    def _holding(self, side: str) -> bool:
        return bool(self._unfinished[side]) or (side == "bytes" and bool(self._decoder.getstate()[0]))

    def _redacted(self, text: str, side: str) -> str:
        """What to write now of `text`, after what `side` held back: redacted, less the end it now holds back. What
        the other side holds is written out first, so that output keeps its order."""
        self._release("bytes" if side == "text" else "text")
        pending = self._unfinished[side] + text
        cut = unfinished_secret_start(pending, self._secrets)
        self._unfinished[side] = pending[cut:]
        return redact(pending[:cut], secrets=self._secrets)

    def _release(self, side: str) -> None:
        """Write out (redacted) what `side` holds back: it did not become a secret."""
        if not self._holding(side):
            return
        held, self._unfinished[side] = self._unfinished[side], ""
        if side == "text":
            self._stream.write(redact(held, secrets=self._secrets))
            self._stream.flush()  # a text wrapper's own buffer, ahead of the bytes that follow
        else:
            held += self._decoder.decode(b"", final=True)
            self._decoder.reset()
            self._stream.buffer.write(redact(held, secrets=self._secrets).encode("utf-8", "surrogateescape"))
            self._stream.buffer.flush()

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # a text stream's error, before anything is held back
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            holding = self._holding("bytes") or self._holding("text")
            self._stream.write(self._redacted(text, "text") if self._secrets or holding else text)
        return len(text)

    def writelines(self, lines) -> None:  # else __getattr__ would hand it to the wrapped stream, unredacted
        for line in lines:
            self.write(line)

    def write_bytes(self, data) -> int:
        """`.buffer.write(data)`: bytes read as UTF-8 to find the secrets; bytes that are not UTF-8 pass through
        unchanged (surrogateescape)."""
        view = memoryview(data)  # a TypeError for what a binary stream refuses, before anything is written
        with self._lock:
            if self._secrets or self._holding("bytes") or self._holding("text"):
                data = self._redacted(self._decoder.decode(view.tobytes()), "bytes").encode("utf-8", "surrogateescape")
            self._stream.buffer.write(data)
        return view.nbytes  # what a binary stream's write returns: the bytes it was given

    def flush(self) -> None:
        with self._lock:
            self._release("text")
            self._release("bytes")
            self._stream.flush()

    def close(self) -> None:
        if not self._stream.closed:  # closing twice is allowed, as for any stream
            self.flush()
        self._stream.close()

    def detach(self):
        self.flush()
        return self._stream.detach()

    @property
    def buffer(self):
        """The binary stream underneath (`sys.stdout.buffer.write(b"...")`), redacted the same way."""
        return _RedactingBinaryStream(self)

    def __getattr__(self, name):  # isatty, fileno, encoding, closed, ...: the wrapped stream's
        return getattr(self._stream, name)


class _RedactingBinaryStream:
    """The binary side of a RedactingStream (`.buffer` makes a new one each time, so the state lives there)."""

    def __init__(self, text_side: RedactingStream):
        self._text_side = text_side
        self._stream = text_side._stream.buffer

    def write(self, data) -> int:
        return self._text_side.write_bytes(data)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._text_side.flush()

    def close(self) -> None:
        if not self._stream.closed:
            self._text_side.flush()
        self._stream.close()

    def __getattr__(self, name):
        return getattr(self._stream, name)


# Every RedactingStream, for a forked child: a lock another thread held at the fork would never be released there,
# and what the parent holds back is the parent's to write.
_STREAMS: weakref.WeakSet[RedactingStream] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for stream in _STREAMS:
        stream._lock = threading.RLock()
        stream._unfinished = {"text": "", "bytes": ""}
        stream._decoder.reset()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RedactedCopy:
    """Copies a child process's output pipe (`source`, binary) into the text file `target`, redacting the secrets
    of `env` (the child's environment) on the way, in a thread that reads the pipe until it closes, so that the
    child never blocks on a full pipe (after a failed write too: the rest is read and dropped, `error` says why).
    Unlike the child's own redacted sys.stdout, this also sees what the child writes straight to its file
    descriptors (os.write, C extensions, a crash's traceback). Each chunk is on disk once read (a log can be
    followed while the child runs), less an end that could start a secret, which waits for the next chunk. POSIX
    only (a selector on a pipe), as the run-directory lock is."""

    POLL_S = 0.2  # how often the thread looks whether it was told to stop while the pipe is quiet

    def __init__(self, source, target, env: Mapping[str, str] | None = None):
        self._source, self._target = source, target
        self._stream = RedactingStream(target, env)
        self._stop = threading.Event()
        self.error: Exception | None = None  # the first failed write to `target`; nothing is written after it
        self._thread = threading.Thread(target=self._pump, name="redacted-copy", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        import selectors

        fd = self._source.fileno()  # read unbuffered: a buffer could hold bytes that the selector does not see
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while not self._stop.is_set():  # checked on every pass: a process that keeps writing cannot hold us
                if not selector.select(self.POLL_S):
                    continue
                chunk = os.read(fd, 1 << 16)  # whatever the pipe has now, without waiting for more
                if not chunk:
                    self._write(None)  # the pipe's end: what was held back was no secret's start
                    return
                self._write(chunk)
        # stopped with the pipe still open: what is held back may be a secret's first characters; it is dropped

    def _write(self, chunk: bytes | None) -> None:
        """Write a chunk (None: what the stream holds back), unless a write failed already (disk full)."""
        if self.error is not None:
            return
        try:
            if chunk is None:
                self._stream.flush()
            else:
                self._stream.write_bytes(chunk)
                self._target.flush()  # the file's own buffer: what the stream holds back stays held
        except Exception as exc:  # noqa: BLE001 - any failure: the thread must go on draining, or the child blocks
            self.error = exc

    def finish(self, linger_s: float = 30.0) -> bool:
        """After the child has ended: wait for its pipe to close, which a process it started and left running
        (wandb's service, say) may hold open, for at most `linger_s`; then stop copying and close our end, so that
        such a process's later writes fail (EPIPE; a program that does not handle SIGPIPE ends there). Returns
        whether the pipe closed in time (False: what such a process wrote after that is not in the file)."""
        self._thread.join(linger_s)
        pipe_closed = not self._thread.is_alive()
        self._stop.set()
        self._thread.join()
        self._source.close()
        return pipe_closed


def redact_standard_streams() -> None:
    """Route everything printed from now on (ours, typer's, transformers', tqdm's) through the redaction of the
    secrets in the environment now. The CLI's entry point does this, and `dpo train` again for callers that skip it
    (typer's test runner swaps the streams per call): a stream that already redacts is not wrapped a second time,
    but learns the secrets set since it was wrapped (a notebook that sets a token between two calls)."""
    import sys

    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, RedactingStream):
            stream.refresh()
        else:
            setattr(sys, name, RedactingStream(stream))


def scrubbed_arguments(args, env: Mapping[str, str] | None = None):
    """A shallow copy of a dataclass of arguments (transformers' TrainingArguments) for writing to a file or a
    logger: fields named like a secret (`hub_token`) emptied, secrets redacted from every other field's strings.
    The original is untouched: the run keeps using its real paths."""
    import copy
    import dataclasses

    secrets = secret_values(env)
    if not secrets:
        return args
    scrubbed = copy.copy(args)
    for f in dataclasses.fields(args):
        value = getattr(args, f.name, None)
        if is_secret_name(f.name) and value is not None:
            object.__setattr__(scrubbed, f.name, None)
        elif isinstance(value, str | Path | list | tuple | dict) and any(v in str(value) for _, v in secrets):
            object.__setattr__(scrubbed, f.name, redact_data(value, secrets=secrets))
    return scrubbed
