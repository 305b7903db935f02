"""download.py: offline instructions, checksum failures leave nothing behind, archives extract into the layout.
No test touches the network: urllib.request.urlopen is replaced in each one."""
from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from data_pipeline import download as dl


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _serve(monkeypatch, payloads: dict[str, bytes]):
    """Makes urlopen return `payloads[url]`; any other URL fails as offline; records the URLs asked for."""
    asked = []

    def fake_urlopen(url, timeout=None):
        asked.append(url)
        if url not in payloads:
            raise urllib.error.URLError("[Errno -2] Name or service not known")
        return io.BytesIO(payloads[url])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return asked


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_table_covers_every_dataset_with_real_checksums():
    assert set(dl.FILES) == {"ml-1m", "ml-20m", "ml-100k", "beauty", "sports", "books"}
    for name, files in dl.FILES.items():
        for f in files:
            assert f.url.startswith(("https://", "http://"))
            for digest in (f.sha256, f.member_sha256):
                assert digest is None or (len(digest) == 64 and int(digest, 16) >= 0)
            if name != "books":
                assert f.sha256 is not None, f"{name}: {f.target} has no sha256"


@pytest.mark.parametrize("name", ["beauty", "ml-1m", "books"])
def test_offline_error_names_target_and_url(tmp_path, monkeypatch, name):
    asked = _serve(monkeypatch, {})
    with pytest.raises(FileNotFoundError) as e:
        dl.ensure_dataset(name, tmp_path)
    msg = str(e.value)
    required = [f for f in dl.FILES[name] if f.required]
    for f in required:
        assert str(tmp_path / f.target) in msg and f.url in msg, msg
        if f.member:
            assert f.member in msg
    assert "Name or service not known" in msg
    assert set(asked) == {f.url for f in dl.FILES[name]}
    assert _files_under(tmp_path) == []


def test_no_download_never_touches_the_network(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("network used although download=False")

    monkeypatch.setattr(urllib.request, "urlopen", boom)
    with pytest.raises(FileNotFoundError) as e:
        dl.ensure_dataset("ml-20m", tmp_path, download=False)
    assert "downloads disabled" in str(e.value) and str(tmp_path / "ml-20m" / "ratings.csv") in str(e.value)


def test_checksum_mismatch_is_an_error_and_leaves_no_file(tmp_path, monkeypatch):
    f = dl.FILES["beauty"][0]
    _serve(monkeypatch, {f.url: b"1 2 3\n"})
    with pytest.raises(dl.ChecksumError, match="sha256 mismatch"):
        dl.download_file(f.url, tmp_path / "Beauty.txt", f.sha256)
    assert _files_under(tmp_path) == []
    with pytest.raises(FileNotFoundError) as e:
        dl.ensure_dataset("beauty", tmp_path)
    assert "sha256 mismatch" in str(e.value)
    assert _files_under(tmp_path) == []


def test_download_verifies_and_renames(tmp_path, monkeypatch):
    body = b"1 2 3\n"
    _serve(monkeypatch, {"https://example.org/a.txt": body})
    out = dl.download_file("https://example.org/a.txt", tmp_path / "sub" / "a.txt", hashlib.sha256(body).hexdigest())
    assert out.read_bytes() == body and _files_under(tmp_path) == [out]


def test_zip_dataset_is_extracted_into_the_layout(tmp_path, monkeypatch):
    u_data = b"1\t2\t3\t4\n"
    archive = _zip_bytes({"ml-100k/u.data": u_data, "ml-100k/u.item": b"x"})
    spec = dl.RawFile("ml-100k/u.data", "https://example.org/ml-100k.zip", hashlib.sha256(archive).hexdigest(),
                      member="ml-100k/u.data", member_sha256=hashlib.sha256(u_data).hexdigest())
    monkeypatch.setitem(dl.FILES, "ml-100k", (spec,))
    _serve(monkeypatch, {spec.url: archive})
    folder = dl.ensure_dataset("ml-100k", tmp_path)
    assert folder == tmp_path / "ml-100k"
    assert _files_under(tmp_path) == [tmp_path / "ml-100k" / "u.data", tmp_path / "ml-100k" / "u.item"]
    assert (folder / "u.data").read_bytes() == u_data


def test_extracted_member_with_wrong_checksum_is_removed(tmp_path, monkeypatch):
    archive = _zip_bytes({"ml-100k/u.data": b"1\t2\t3\t4\n"})
    spec = dl.RawFile("ml-100k/u.data", "https://example.org/ml-100k.zip", hashlib.sha256(archive).hexdigest(),
                      member="ml-100k/u.data", member_sha256="0" * 64)
    monkeypatch.setitem(dl.FILES, "ml-100k", (spec,))
    _serve(monkeypatch, {spec.url: archive})
    with pytest.raises(FileNotFoundError) as e:
        dl.ensure_dataset("ml-100k", tmp_path)
    assert "ChecksumError" in str(e.value)
    assert not (tmp_path / "ml-100k" / "u.data").exists()
    assert not any(p.name.endswith((".part", ".zip")) for p in _files_under(tmp_path))


def test_zip_member_outside_root_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip_bytes({"../escape.txt": b"x"}))
    with pytest.raises(ValueError, match="outside"):
        dl.extract_zip(archive, tmp_path / "root")
    assert not (tmp_path / "escape.txt").exists()


def test_optional_file_missing_only_warns(tmp_path, monkeypatch, caplog):
    main = dl.FILES["beauty"][0]
    (tmp_path / main.target).parent.mkdir(parents=True)
    (tmp_path / main.target).write_text("1 2 3\n")
    _serve(monkeypatch, {})
    assert dl.ensure_dataset("beauty", tmp_path) == tmp_path / "amazon-s3rec"
    assert "optional file" in caplog.text and dl.FILES["beauty"][1].url in caplog.text


def test_unknown_dataset(tmp_path):
    with pytest.raises(KeyError, match="ml-1m"):
        dl.ensure_dataset("nope", tmp_path)
