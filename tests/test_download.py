"""The download path without the internet: a local HTTP server that honours Range requests."""
import http.server
import threading
import zipfile
from functools import partial

import pytest

from stt.download import Archive, extract_archive, fetch, verify_archive


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    cut = None  # serve at most this many bytes of the body (simulates a dropped connection)

    def do_GET(self):
        data = (self.directory_path / self.path.lstrip("/")).read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: self.cut] if self.cut else body)

    def log_message(self, *a):
        pass


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    RangeHandler.directory_path = served
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    RangeHandler.cut = None


def _make_zip(path, names=("DAVIS/JPEGImages/480p/a/00000.jpg", "DAVIS/Annotations/480p/a/00000.png",
                           "DAVIS/ImageSets/2017/val.txt")):
    with zipfile.ZipFile(path, "w") as z:
        for n in names:
            z.writestr(n, b"x" * 5000)
    return path


ARCH = Archive(url="", filename="d.zip", folder="DAVIS",
               layout=("JPEGImages/480p", "Annotations/480p", "ImageSets/2017/val.txt"))


def test_fetch_resumes_a_partial_download(server, tmp_path):
    served, url = server
    _make_zip(served / "d.zip")
    RangeHandler.cut = 4000
    with pytest.raises(IOError, match="resume"):
        fetch(f"{url}/d.zip", tmp_path / "d.zip", progress=False)
    assert (tmp_path / "d.zip.part").stat().st_size == 4000
    RangeHandler.cut = None
    fetch(f"{url}/d.zip", tmp_path / "d.zip", progress=False)
    assert (tmp_path / "d.zip").read_bytes() == (served / "d.zip").read_bytes()


def test_verify_and_extract(tmp_path):
    z = _make_zip(tmp_path / "d.zip")
    digest = verify_archive(z)
    assert len(digest) == 64
    with pytest.raises(ValueError, match="SHA-256"):
        verify_archive(z, expected_sha256="0" * 64)
    target = extract_archive(z, tmp_path / "data", ARCH)
    assert (target / "ImageSets/2017/val.txt").is_file()


def test_corrupt_archive_and_wrong_layout(tmp_path):
    z = _make_zip(tmp_path / "d.zip")
    raw = bytearray(z.read_bytes())
    raw[100:110] = b"\xff" * 10  # inside the first member's data
    (tmp_path / "bad.zip").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="CRC|not a valid zip"):
        verify_archive(tmp_path / "bad.zip")
    other = _make_zip(tmp_path / "o.zip", names=("DAVIS/README",))
    with pytest.raises(ValueError, match="lacks"):
        extract_archive(other, tmp_path / "data2", ARCH)
    assert not (tmp_path / "data2" / "DAVIS").exists()
