"""HTTP downloads: one shared session with timeouts and retries, validated atomic saves.

``make_session`` builds a ``requests.Session`` whose urllib3 ``Retry`` retries connection
errors, read timeouts and 5xx answers with exponential backoff (never a 404).
``download_file(session, url, path, validate=...)`` streams a URL to a temporary name beside
``path``, optionally converts it (``transform``), checks it (``validate``) and only then renames
it onto ``path``: a crash, a dropped connection or a bad body never leaves a partial file.
A body cut off mid-stream is fetched again (``attempts``); the result says what happened.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, ReadTimeoutError
from urllib3.util.retry import Retry

from common.images import read_channel
from common.io import WRITE_ERRNOS, WriteError, atomic_path

# statuses of a DownloadResult
OK = "ok"                     # downloaded, validated, renamed into place
EXISTS = "exists"             # a valid file was already there; no request made
NOT_FOUND = "not_found"       # HTTP 404/410 (not retried)
HTTP_ERROR = "http_error"     # another HTTP error status (5xx after the retries, 403, ...)
TIMEOUT = "timeout"           # connect/read timeout or the overall deadline, after the retries
CONNECTION = "connection"     # connection refused/reset, or the body cut off, after the retries
INVALID = "invalid"           # the body arrived but failed validation/conversion (corrupt file)
RETRY_STATUSES = (500, 502, 503, 504)
CHUNK = 1 << 16


@dataclass(frozen=True)
class Patience:
    """How long ``download_file`` waits and how often it tries: ``timeout`` per connect/read (requests
    semantics), ``max_seconds`` bounds one attempt (None: no bound), ``attempts`` in all for a body cut
    off mid-stream (sleeping ``backoff * 2**k`` between them)."""

    timeout: float | tuple = 30.0
    max_seconds: float | None = None
    attempts: int = 3
    backoff: float = 0.5


@dataclass
class DownloadResult:
    """What ``download_file`` did: ``status`` (one of the constants above), bytes received
    (``nbytes``, all attempts), a human-readable ``detail`` and the validator's return value."""

    status: str
    nbytes: int = 0
    detail: str = ""
    info: Any = None

    @property
    def ok(self) -> bool:
        return self.status in (OK, EXISTS)


def make_session(retries: int = 5, backoff: float = 0.5, pool_size: int = 16,
                 user_agent: str = "hpa-single-cell/0.1") -> requests.Session:
    """A session retrying connection errors, read timeouts and 5xx ``retries`` times.

    Backoff between retries is ``backoff * 2**(n-1)`` seconds (urllib3), honouring
    ``Retry-After``. ``pool_size`` should be at least the number of threads sharing the session.
    """
    retry = Retry(total=retries, connect=retries, read=retries, status=retries, other=0,
                  backoff_factor=backoff, status_forcelist=RETRY_STATUSES,
                  allowed_methods=frozenset({"GET", "HEAD"}), raise_on_status=False,
                  respect_retry_after_header=True)
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=max(1, pool_size))
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
    return session


def validate_image(path: str | Path) -> tuple[int, int]:
    """Decode a channel file (JPG, PNG, TIF, TIF.GZ) with ``common.images.read_channel``; its shape.

    Raises ``common.io.ImageReadError`` when the file does not decode as a 2-D image.
    """
    return read_channel(path).shape


def _url_suffix(url: str) -> str:
    name = url.split("?", 1)[0].rsplit("/", 1)[-1].lower()
    for ext in (".tif.gz", ".tiff.gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gz"):
        if name.endswith(ext):
            return ext
    return ""


def _stream(session: requests.Session, url: str, dest: Path, timeout: float | tuple,
            deadline: float | None, on_bytes: Callable[[int], None] | None) -> tuple[int, int]:
    """GET ``url`` into ``dest``; (HTTP status, bytes written). Raises requests errors."""
    n = 0
    with session.get(url, stream=True, timeout=timeout) as r:
        if r.status_code != 200:
            return r.status_code, 0
        with open(dest, "wb") as f:
            for chunk in _chunks(r):
                f.write(chunk)
                n += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
                if deadline is not None and time.monotonic() > deadline:
                    raise requests.Timeout(f"download took longer than the deadline ({n} bytes so far)")
    return 200, n


def _chunks(r: requests.Response):
    """The body as it arrives (``read1``: returns as soon as some bytes are there, so a deadline
    is checked often even on a slow drip); ``iter_content`` where urllib3 has no ``read1``."""
    read1 = getattr(r.raw, "read1", None)
    if read1 is None:
        yield from r.iter_content(CHUNK)
        return
    while True:
        chunk = read1(CHUNK, decode_content=True)
        if not chunk:
            return
        yield chunk


def download_file(session: requests.Session, url: str, path: str | Path,
                  validate: Callable[[Path], Any] | None = validate_image, *,
                  transform: Callable[[Path, Path], None] | None = None,
                  patience: Patience = Patience(), skip_existing: bool = True,
                  on_bytes: Callable[[int], None] | None = None) -> DownloadResult:
    """Download ``url`` to ``path`` atomically; never raises for network or content problems.

    - ``validate(tmp_path)`` must raise on a bad file; its return value lands in ``result.info``.
      With ``skip_existing`` an existing ``path`` that validates is kept (status ``exists``).
    - ``transform(raw, out)`` converts the raw download (a temporary file whose suffix is the
      URL's, e.g. ``.tif.gz``) into ``out``, a temporary of ``io.atomic_path``:
      ``io.target_name(out)`` is ``path``'s name and ``io.imwrite`` writes the format it says.
    - ``patience`` (:class:`Patience`): the per connect/read ``timeout``, ``max_seconds`` per attempt;
      a body cut off mid-stream is fetched again up to ``attempts`` times in all (sleeping
      ``backoff * 2**k``); 5xx/connection errors are retried inside the session itself.
    """
    path = Path(path)
    if skip_existing and path.is_file():
        try:
            info = validate(path) if validate is not None else None
            return DownloadResult(EXISTS, 0, "already present", info)
        except Exception:  # noqa: BLE001 - a corrupt leftover is downloaded again
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    got = [0]  # bytes received over all attempts, cut-off bodies included

    def count(n: int) -> None:
        got[0] += n
        if on_bytes is not None:
            on_bytes(n)

    last = DownloadResult(CONNECTION, 0, "no attempt made")
    for attempt in range(max(1, patience.attempts)):
        if attempt:
            time.sleep(patience.backoff * 2 ** (attempt - 1))
        fd, raw_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + _url_suffix(url),
                                        dir=path.parent)
        os.close(fd)
        raw = Path(raw_name)
        try:
            fetched = _fetch(session, url, path, raw, patience, count, got)
            if isinstance(fetched, DownloadResult):
                return fetched
            return _save(path, raw, url, fetched, got[0], validate, transform)
        except _CutOff as e:  # the session does not retry a body that broke mid-stream: we do
            last = e.result
        finally:
            if raw.exists():
                raw.unlink()
    return last


class _CutOff(Exception):
    """The body broke off mid-stream (``result`` says how): download_file fetches it again."""

    def __init__(self, result: DownloadResult):
        super().__init__(result.detail)
        self.result = result


def _fetch(session: requests.Session, url: str, path: Path, raw: Path, patience: Patience,
           count: Callable[[int], None], got: list[int]) -> int | DownloadResult:
    """One request of ``url`` streamed into ``raw`` -> the body's byte count, or the result of a failed
    request (raises :class:`_CutOff` for a body cut off, :class:`common.io.WriteError` when ``raw``
    cannot be written)."""
    deadline = time.monotonic() + patience.max_seconds if patience.max_seconds else None
    try:
        code, n = _stream(session, url, raw, patience.timeout, deadline, count)
    except (requests.Timeout, urllib3.exceptions.ReadTimeoutError) as e:
        return DownloadResult(TIMEOUT, got[0], f"timeout: {_short(e)}")
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError,
            urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError) as e:
        raise _CutOff(DownloadResult(CONNECTION, got[0], f"body cut off: {_short(e)}")) from e
    except requests.exceptions.RetryError as e:
        return DownloadResult(HTTP_ERROR, got[0], f"gave up after retries: {_short(e)}")
    except requests.ConnectionError as e:
        if _is_timeout(e):  # requests reports a read timeout after retries this way
            return DownloadResult(TIMEOUT, got[0], f"timeout: {_short(e)}")
        return DownloadResult(CONNECTION, got[0], f"connection error: {_short(e)}")
    except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
        return DownloadResult(CONNECTION, got[0], f"request failed: {_short(e)}")
    except OSError as e:  # writing the body out: out of space is fatal for the step
        if e.errno in WRITE_ERRNOS:
            raise WriteError(path, e) from e
        raise
    if code in (404, 410):
        return DownloadResult(NOT_FOUND, got[0], f"HTTP {code}")
    if code != 200:
        return DownloadResult(HTTP_ERROR, got[0], f"HTTP {code}")
    return n


def _save(path: Path, raw: Path, url: str, n: int, got: int, validate, transform) -> DownloadResult:
    """``raw`` (``n`` bytes) converted and validated into ``path`` atomically -> ok, or invalid content."""
    tmp_name = str(raw)
    try:
        with atomic_path(path) as tmp:
            tmp_name = str(tmp)
            try:
                if transform is not None:
                    transform(raw, tmp)
                else:
                    os.replace(raw, tmp)
                info = validate(tmp) if validate is not None else None
            except OSError as e:  # a decoder's OSError is the content's; out of space is not
                if e.errno in WRITE_ERRNOS:
                    raise
                raise ValueError(str(e)) from e
    except Exception as e:  # noqa: BLE001 - any decoder/converter failure = invalid content
        why = _short(e).replace(tmp_name, url).replace(str(raw), url)
        return DownloadResult(INVALID, got, f"invalid content ({n} bytes): {why}")
    return DownloadResult(OK, got, f"{n} bytes", info)


def _is_timeout(e: BaseException) -> bool:
    seen = 0
    stack: list[Any] = [e]
    while stack and seen < 20:
        x = stack.pop()
        seen += 1
        if isinstance(x, (TimeoutError, ReadTimeoutError, ConnectTimeoutError, requests.Timeout)):
            return True
        if isinstance(x, BaseException):
            stack.extend(a for a in x.args if isinstance(a, BaseException))
            stack.extend(y for y in (getattr(x, "reason", None), x.__cause__, x.__context__) if y is not None)
    return False


def _short(e: BaseException, limit: int = 200) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
