"""S1 / common.data.download against a real HTTP server on 127.0.0.1 with injected faults."""
from __future__ import annotations

import collections
import gzip
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile

import S1_external_data_download as s1
from common import config, constants, images
from common.data import download

HOST = "https://images.proteinatlas.org"


# ---------------------------------------------------------------------------- fake HPA server
def jpeg_channel(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = ((xx + yy * 2 + seed * 17) % 256).astype(np.uint8)
    img = cv2.GaussianBlur(img, (5, 5), 0) // 2 + rng.integers(0, 60, (size, size), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def tifgz_channel(seed: int, size: int = 64) -> tuple[bytes, np.ndarray]:
    arr = np.random.default_rng(seed).integers(0, 65535, (size, size), dtype=np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return gzip.compress(buf.getvalue()), arr


class HPAServer:
    """Serves ``files`` (URL path -> bytes) over HTTP/1.1 keep-alive; counts requests per path.

    ``faults[path]`` is a list of faults consumed one per request: "500", "404", "slow" (sleep
    ``slow_s`` before answering), "drop" (promise more bytes than sent, then close), "drip"
    (send the body in small pieces, ``drip_s`` apart). ``latency`` delays every request.
    """

    def __init__(self, files: dict[str, bytes] | None = None, latency: float = 0.0,
                 slow_s: float = 1.0, drip_s: float = 0.05):
        self.files = dict(files or {})
        self.faults: dict[str, list[str]] = collections.defaultdict(list)
        self.hits: collections.Counter = collections.Counter()
        self.latency, self.slow_s, self.drip_s = latency, slow_s, drip_s
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):  # noqa: N802
                path = self.path
                with server.lock:
                    server.hits[path] += 1
                    fault = server.faults[path].pop(0) if server.faults.get(path) else None
                if server.latency:
                    time.sleep(server.latency)
                try:
                    self._answer(path, fault)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _send(self, code: int, body: bytes, length: int | None = None):
                self.send_response(code)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()

            def _answer(self, path, fault):
                if fault == "slow":
                    time.sleep(server.slow_s)
                if fault == "500":
                    return self._send(500, b"oops") or self.wfile.write(b"oops")
                body = server.files.get(path)
                if body is None or fault == "404":
                    self._send(404, b"not found")
                    self.wfile.write(b"not found")
                    return None
                if fault == "drop":
                    self._send(200, body, length=len(body) + 5000)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return None
                self._send(200, body)
                if fault == "drip":
                    for k in range(0, len(body), 64):
                        self.wfile.write(body[k:k + 64])
                        self.wfile.flush()
                        time.sleep(server.drip_s)
                else:
                    self.wfile.write(body)
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def add_image(self, stem: str, seed: int, colors=constants.CHANNELS) -> None:
        for k, c in enumerate(colors):
            self.files[f"/{stem}_{c}.jpg"] = jpeg_channel(seed * 10 + k)

    def total_hits(self) -> int:
        return sum(self.hits.values())


def leftovers(folder: Path) -> list[str]:
    """Temporary files left by an interrupted or failed save (there must be none)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".part" in p.name)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def session():
    s = download.make_session(retries=2, backoff=0.01, pool_size=4)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _restore_s1_constants():
    """config.parse writes overrides back into the module's globals: undo after each test."""
    saved = config.constants_of(vars(s1))
    yield
    vars(s1).update(saved)


# ---------------------------------------------------------------------------- download_file
def test_500_then_success_is_retried(tmp_path, session):
    with HPAServer({"/a.jpg": jpeg_channel(1)}) as srv:
        srv.faults["/a.jpg"] = ["500", "500"]
        r = download.download_file(session, srv.url + "/a.jpg", tmp_path / "a.jpg",
                                   patience=download.Patience(timeout=2))
        assert r.status == download.OK and r.info == (64, 64)
        assert srv.hits["/a.jpg"] == 3
        assert images.read_channel(tmp_path / "a.jpg").shape == (64, 64)
        srv.faults["/a.jpg"] = ["500"] * 5  # more 500s than retries: reported, nothing saved
        r = download.download_file(session, srv.url + "/a.jpg", tmp_path / "b.jpg",
                                   patience=download.Patience(timeout=2))
        assert r.status == download.HTTP_ERROR and "500" in r.detail
        assert srv.hits["/a.jpg"] == 3 + 3
    assert not (tmp_path / "b.jpg").exists() and leftovers(tmp_path) == []


def test_404_is_not_retried_and_existing_file_is_skipped(tmp_path, session):
    with HPAServer({"/a.jpg": jpeg_channel(1)}) as srv:
        r = download.download_file(session, srv.url + "/missing.jpg", tmp_path / "m.jpg",
                                   patience=download.Patience(timeout=2))
        assert r.status == download.NOT_FOUND and srv.hits["/missing.jpg"] == 1
        assert download.download_file(session, srv.url + "/a.jpg", tmp_path / "a.jpg").status == "ok"
        again = download.download_file(session, srv.url + "/a.jpg", tmp_path / "a.jpg")
        assert again.status == download.EXISTS and srv.hits["/a.jpg"] == 1
        (tmp_path / "a.jpg").write_bytes(b"garbage")  # a corrupt leftover is fetched again
        assert download.download_file(session, srv.url + "/a.jpg", tmp_path / "a.jpg").status == "ok"
        assert srv.hits["/a.jpg"] == 2
    assert not (tmp_path / "m.jpg").exists() and leftovers(tmp_path) == []


def test_connection_dropped_mid_body(tmp_path, session):
    body = jpeg_channel(2)
    with HPAServer({"/a.jpg": body}) as srv:
        srv.faults["/a.jpg"] = ["drop"]
        r = download.download_file(session, srv.url + "/a.jpg", tmp_path / "a.jpg",
                                   patience=download.Patience(timeout=2, backoff=0.01))
        assert r.status == download.OK and srv.hits["/a.jpg"] == 2
        assert r.nbytes == len(body) // 2 + len(body)  # the cut-off half is counted too
        assert (tmp_path / "a.jpg").read_bytes() == body
        srv.faults["/a.jpg"] = ["drop"] * 3  # dropped on every attempt: reported, no partial file
        r = download.download_file(session, srv.url + "/a.jpg", tmp_path / "b.jpg",
                                   patience=download.Patience(timeout=2, attempts=3, backoff=0.01))
        assert r.status == download.CONNECTION and "cut off" in r.detail
        assert srv.hits["/a.jpg"] == 2 + 3
    assert not (tmp_path / "b.jpg").exists() and leftovers(tmp_path) == []


def test_corrupt_jpeg_is_rejected(tmp_path, session):
    good = jpeg_channel(3)
    files = {"/bad.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "/trunc.jpg": good[:-200]}
    with HPAServer(files) as srv:
        for name in ("bad", "trunc"):
            r = download.download_file(session, f"{srv.url}/{name}.jpg", tmp_path / f"{name}.jpg",
                                       patience=download.Patience(timeout=2))
            assert r.status == download.INVALID, r
            assert not (tmp_path / f"{name}.jpg").exists()
    assert leftovers(tmp_path) == []


def test_slow_response_times_out(tmp_path):
    s = download.make_session(retries=1, backoff=0.01)
    with HPAServer({"/a.jpg": jpeg_channel(4)}, slow_s=1.5, drip_s=0.05) as srv:
        srv.faults["/a.jpg"] = ["slow", "slow"]
        r = download.download_file(s, srv.url + "/a.jpg", tmp_path / "a.jpg",
                                   patience=download.Patience(timeout=0.3))
        assert r.status == download.TIMEOUT, r
        assert srv.hits["/a.jpg"] == 2  # the read timeout was retried once by the session
        srv.faults["/a.jpg"] = ["drip"]  # each read is quick, the whole body is not: the deadline cuts it
        r = download.download_file(s, srv.url + "/a.jpg", tmp_path / "a.jpg",
                                   patience=download.Patience(timeout=1, max_seconds=0.3))
        assert r.status == download.TIMEOUT and "deadline" in r.detail
    s.close()
    assert not (tmp_path / "a.jpg").exists() and leftovers(tmp_path) == []


def test_transform_tifgz_to_png(tmp_path, session):
    data, arr = tifgz_channel(5)
    with HPAServer({"/a.tif.gz": data}) as srv:
        r = download.download_file(session, srv.url + "/a.tif.gz", tmp_path / "a.png",
                                   transform=s1.tif_to_png)
        assert r.ok
    png = cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint8 and np.array_equal(png, images.to_uint8(arr))
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- the list
def write_list(path: Path, rows: list[dict], sep: str) -> Path:
    pd.DataFrame(rows).to_csv(path, sep=sep, index=False)
    return path


ROWS = [
    {"Image": f"{HOST}/1/100_A1_1", "Label": "Nucleoplasm,Golgi apparatus", "Label_idx": "",
     "Cellline": "U-2 OS", "in_trainset": "False"},
    {"Image": f"{HOST}/2/200_B2_2", "Label": "Mitotic spindle", "Label_idx": "11",
     "Cellline": "HeLa", "in_trainset": "False"},
    {"Image": f"{HOST}/3/300_C3_3", "Label": "Nucleoplasm", "Label_idx": "0",
     "Cellline": "U-2 OS", "in_trainset": "True"},
    {"Image": f"{HOST}/4/400_D4_4", "Label": "Nucleoplasm", "Label_idx": "0",
     "Cellline": "MCF7", "in_trainset": "False"},
    {"Image": f"{HOST}/5/500_E5_5", "Label": "", "Label_idx": "", "Cellline": "A549", "in_trainset": "False"},
    {"Image": f"{HOST}/../etc/passwd", "Label": "Nucleoplasm", "Label_idx": "0",
     "Cellline": "A549", "in_trainset": "False"},
]


@pytest.mark.parametrize("sep", ["\t", ","])
def test_list_separator_detection(tmp_path, sep):
    p = write_list(tmp_path / "kaggle_2021.tsv", ROWS, sep)
    assert s1.detect_separator(p) == sep
    df = s1.read_hpa_list(p)
    assert list(df["Image"]) == [r["Image"] for r in ROWS]
    assert df.loc[0, "Label"] == "Nucleoplasm,Golgi apparatus"  # the quoted comma survives


def test_bad_list_is_reported(tmp_path):
    with pytest.raises(SystemExit, match="not found"):
        s1.read_hpa_list(tmp_path / "nope.tsv")
    p = tmp_path / "x.tsv"
    p.write_text("Image\tCellline\nhttps://x/1/2\tA549\n")
    with pytest.raises(SystemExit, match=r"x\.tsv: missing column"):
        s1.read_hpa_list(p)


def test_label_names():
    assert s1.labels_from_names("Nucleoplasm,Golgi apparatus") == [0, 7]
    assert s1.labels_from_names("focal adhesion sites, Centriolar satellite;CELL JUNCTIONS") == [9, 12, 13]
    assert s1.labels_from_names("Peroxisomes,Endosomes,Lysosomes,Lipid droplets,Cytoplasmic bodies") == [17]
    assert s1.labels_from_names("No staining") == [18]
    assert s1.labels_from_names("Vesicles and punctate cytosolic patterns,Negative") == [17, 18]
    assert s1.labels_from_names("Cytokinetic bridge") == []  # not a class: ignored
    assert s1.labels_from_names("") == []
    assert s1.row_labels("16|0", "Nucleoplasm") == [16, 0]  # Label_idx wins
    assert s1.row_labels("", "Nucleoli  fibrillar center") == [3]
    assert s1.row_labels("42", "Cytosol") == [16]  # an invalid Label_idx falls back to the names


def test_image_id_validation():
    base = "http://127.0.0.1:9"
    host = "images.proteinatlas.org"
    assert s1.image_id(f"{HOST}/1234/567_A1_1", base, host) == ("1234_567_A1_1", f"{base}/1234/567_A1_1")
    assert s1.image_id("1234/567_A1_1", base + "/", host)[0] == "1234_567_A1_1"
    assert s1.image_id("http://127.0.0.1:9/1/2_A1_1", base, host)[0] == "1_2_A1_1"
    for bad in (f"{HOST}/../etc/passwd", f"{HOST}/1234/..", f"{HOST}/1/2/3", f"{HOST}/1234/a%2e%2e",
                "ftp://images.proteinatlas.org/1/2", "https://evil.example/1/2_A1_1",
                f"{HOST}/1/2_A1_1?x=1", "file:///etc/passwd", f"{HOST}/1/.hidden", "1\\2/3"):
        with pytest.raises(ValueError):
            s1.image_id(bad, base, host)


# ---------------------------------------------------------------------------- S1 end to end
def s1_args(tmp_path: Path, tsv: Path, srv: HPAServer, **kw) -> list[str]:
    args = {"HPA_LIST": tsv, "OUT_DIR": tmp_path / "train_external",
            "OUT_CSV": tmp_path / "train_external.csv",
            "FAILURES_CSV": tmp_path / "s1_failures.csv", "BASE_URL": srv.url, "NUM_WORKERS": 4,
            "RETRIES": 1, "BACKOFF": 0.01, "TIMEOUT": 0.4, "MAX_SECONDS": 5, "ATTEMPTS": 2,
            "PROGRESS": False, "MAX_IMAGES": 0, "CLASSES": "[]"}
    args.update(kw)
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def test_s1_end_to_end_with_faults_and_resume(tmp_path):
    tif_g, tif_arr = tifgz_channel(7)
    rows = [  # A fine; B green only as tif.gz; C red missing both; D corrupt blue; E 500 once;
        #       F dropped once; G slow always; H ../ id; plus rows filtered out
        {"Image": f"{HOST}/10/1_A1_1", "Label": "Nucleoplasm,Golgi apparatus", "Label_idx": "",
         "Cellline": "HeLa"},
        {"Image": f"{HOST}/11/2_B1_1", "Label": "Mitotic spindle", "Label_idx": "", "Cellline": "U-2 OS"},
        {"Image": f"{HOST}/12/3_C1_1", "Label": "Cytosol", "Label_idx": "16", "Cellline": "A549"},
        {"Image": f"{HOST}/13/4_D1_1", "Label": "Cytosol", "Label_idx": "16", "Cellline": "A549"},
        {"Image": f"{HOST}/14/5_E1_1", "Label": "Aggresome", "Label_idx": "15", "Cellline": "HEK 293"},
        {"Image": f"{HOST}/15/6_F1_1", "Label": "No staining", "Label_idx": "", "Cellline": "SiHa"},
        {"Image": f"{HOST}/16/7_G1_1", "Label": "Cytosol", "Label_idx": "", "Cellline": "hTCEpi"},
        {"Image": f"{HOST}/17/../../8_H1_1", "Label": "Cytosol", "Label_idx": "", "Cellline": "HeLa"},
        {"Image": f"{HOST}/18/9_I1_1", "Label": "Cytosol", "Label_idx": "", "Cellline": "HeLa"},
        {"Image": f"{HOST}/19/9_J1_1", "Label": "Cytosol", "Label_idx": "", "Cellline": "MCF7"},
    ]
    for r in rows:
        r["in_trainset"] = "True" if "9_I1_1" in r["Image"] else "False"
    tsv = write_list(tmp_path / "kaggle_2021.tsv", rows, ",")
    with HPAServer(slow_s=1.0) as srv:
        for k, stem in enumerate(["10/1_A1_1", "11/2_B1_1", "12/3_C1_1", "13/4_D1_1", "14/5_E1_1",
                                  "15/6_F1_1", "16/7_G1_1", "18/9_I1_1", "19/9_J1_1"]):
            srv.add_image(stem, k)
        del srv.files["/11/2_B1_1_green.jpg"]
        srv.files["/11/2_B1_1_green.tif.gz"] = tif_g
        del srv.files["/12/3_C1_1_red.jpg"]
        good_blue = srv.files["/13/4_D1_1_blue.jpg"]
        srv.files["/13/4_D1_1_blue.jpg"] = b"\xff\xd8not a jpeg at all" * 10
        srv.faults["/14/5_E1_1_red.jpg"] = ["500"]
        srv.faults["/15/6_F1_1_yellow.jpg"] = ["drop"]
        srv.faults["/16/7_G1_1_green.jpg"] = ["slow"] * 2

        summary = s1.main(s1_args(tmp_path, tsv, srv))
        out = tmp_path / "train_external"
        got = pd.read_csv(tmp_path / "train_external.csv", dtype=str)
        assert list(got.columns) == ["ID", "Label", "Cellline"]
        assert list(got["ID"]) == ["10_1_A1_1", "11_2_B1_1", "14_5_E1_1", "15_6_F1_1"]
        assert list(got["Label"]) == ["0|7", "11", "15", "18"]
        fails = pd.read_csv(tmp_path / "s1_failures.csv", dtype=str).fillna("")
        reasons = dict(zip(fails["ID"].where(fails["ID"] != "", fails["Image"]), fails["reason"]))
        assert set(reasons) == {"12_3_C1_1", "13_4_D1_1", "16_7_G1_1", f"{HOST}/17/../../8_H1_1"}
        assert reasons["12_3_C1_1"].startswith("red: not_found") and "tif.gz" in reasons["12_3_C1_1"]
        assert reasons["13_4_D1_1"].startswith("blue: invalid")
        assert reasons["16_7_G1_1"].startswith("green: timeout")
        assert "rejected" in reasons[f"{HOST}/17/../../8_H1_1"]
        assert summary["complete"] == 4 and summary["tif_fallback"] == 1
        assert srv.hits["/14/5_E1_1_red.jpg"] == 2 and srv.hits["/15/6_F1_1_yellow.jpg"] == 2
        assert srv.hits["/11/2_B1_1_green.jpg"] == 1 and srv.hits["/11/2_B1_1_green.tif.gz"] == 1
        assert not any("9_I1_1" in p or "9_J1_1" in p or ".." in p for p in srv.hits)
        for iid in got["ID"]:
            img = images.read_image(out, iid)
            assert img.shape == (64, 64, 4) and img.dtype == np.uint8
        assert (out / "11_2_B1_1_green.png").is_file() and not (out / "11_2_B1_1_green.jpg").exists()
        green = images.read_image(out, "11_2_B1_1")[..., constants.GREEN]
        assert np.array_equal(green, images.to_uint8(tif_arr))
        assert not (out / "13_4_D1_1_blue.jpg").exists() and not (out / "16_7_G1_1_green.jpg").exists()
        assert leftovers(out) == []
        assert not (tmp_path / "8_H1_1_red.jpg").exists() and not list(tmp_path.glob("**/*passwd*"))

        # second run: nothing already complete is requested again; the fixed image now completes
        srv.files["/13/4_D1_1_blue.jpg"] = good_blue
        before = collections.Counter(srv.hits)
        summary2 = s1.main(s1_args(tmp_path, tsv, srv))
        new = srv.hits - before
        assert not any(p.startswith(("/10/", "/11/", "/14/", "/15/")) for p in new), new
        assert new["/13/4_D1_1_blue.jpg"] == 1 and "/13/4_D1_1_red.jpg" not in new
        assert new["/12/3_C1_1_red.jpg"] == 1  # a failed channel is tried again
        assert new["/16/7_G1_1_green.jpg"] == 1  # the server is no longer slow
        assert summary2["complete"] == 6 and summary2["already_present"] == 4
        got2 = pd.read_csv(tmp_path / "train_external.csv", dtype=str)
        assert list(got2["ID"]) == ["10_1_A1_1", "11_2_B1_1", "13_4_D1_1", "14_5_E1_1", "15_6_F1_1",
                                    "16_7_G1_1"]


def test_s1_selection_constants_and_clean_rerun(tmp_path):
    rows = [{"Image": f"{HOST}/{k}/{k}_A1_1", "Label": name, "Label_idx": "", "Cellline": "HeLa",
             "in_trainset": "False"}
            for k, name in enumerate(["Nucleoplasm", "Mitotic spindle", "Aggresome,Cytosol",
                                      "Mitotic spindle"])]
    tsv = write_list(tmp_path / "kaggle_2021.tsv", rows, "\t")
    with HPAServer() as srv:
        for k in range(4):
            srv.add_image(f"{k}/{k}_A1_1", k)
        s = s1.main(s1_args(tmp_path, tsv, srv, CLASSES="11,15", MAX_IMAGES=2))
        got = pd.read_csv(tmp_path / "train_external.csv", dtype=str)
        assert list(got["ID"]) == ["1_1_A1_1", "2_2_A1_1"] and list(got["Label"]) == ["11", "15|16"]
        assert s["channels_fetched"] == 8 and srv.total_hits() == 8
        s = s1.main(s1_args(tmp_path, tsv, srv, CLASSES="11,15", MAX_IMAGES=2))
        assert srv.total_hits() == 8 and s["channels_fetched"] == 0 and s["complete"] == 2
        assert pd.read_csv(tmp_path / "s1_failures.csv").empty
        with pytest.raises(SystemExit, match="CLASSES"):
            s1.main(s1_args(tmp_path, tsv, srv, CLASSES="19"))
        with pytest.raises(SystemExit, match="BASE_URL"):
            s1.main(s1_args(tmp_path, tsv, srv, BASE_URL="ftp://x"))


def test_s1_full_disk_stops_naming_the_file(tmp_path):
    """Out of space while saving a channel is fatal (exit 1, the file and the free space named), not a
    failed image; no partial file stays. The tmpfs lives in a private mount namespace."""
    import sys

    from conftest import ROOT, tmpfs_run

    rows = [{"Image": f"{HOST}/{10 + k}/{k}_A1_1", "Label": "Cytosol", "Label_idx": "16", "Cellline": "A549",
             "in_trainset": "False"} for k in range(6)]
    tsv = write_list(tmp_path / "kaggle_2021.tsv", rows, ",")
    out, snap = tmp_path / "train_external", tmp_path / "snap"
    with HPAServer() as srv:
        for k in range(6):
            srv.add_image(f"{10 + k}/{k}_A1_1", k)
        argv = [sys.executable, str(ROOT / "S1_external_data_download.py"), *s1_args(tmp_path, tsv, srv)]
        proc = tmpfs_run({out: 8 * 1024}, argv, snapshot=snap)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cannot write {out}/") and "No space left on device" in last
    assert "Traceback" not in proc.stderr and not (tmp_path / "train_external.csv").exists()
    assert leftovers(snap) == [] and all(images.read_channel(p).shape == (64, 64) for p in snap.iterdir())
