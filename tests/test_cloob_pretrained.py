"""The ``yfcc15m`` tags, end to end through OpenCLIP's factory and CLIP_benchmark, served from 127.0.0.1.

No test reaches the internet: the authors' file is replaced by an original-layout checkpoint of a
random RN50-cloob, served by a local HTTP server and fetched through ``$OPEN_CLIP_CLOOB_MIRROR``
by the real download, conversion and loading code.
"""
import functools
import http.server
import inspect
import json
import threading

import open_clip
import open_clip.factory
import open_clip.pretrained
import pytest
import torch

import open_clip_cloob
from cloob_checkpoints import encode, original_checkpoint, random_model
from open_clip_cloob import benchmark
from open_clip_cloob.pretrained import (CLOOB_DOWNLOAD_ROOT, CONVERTED_SUFFIX, MIRROR_ENV, RELEASED_CHECKPOINTS,
                                        download_file)

RN50_FILE = RELEASED_CHECKPOINTS[("RN50-cloob", "yfcc15m")]


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder and counts GET requests per path."""

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A local HTTP server on 127.0.0.1 serving a folder: ``(base_url, folder, requests)``."""
    folder = tmp_path_factory.mktemp("served")
    handler = functools.partial(_CountingHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, httpd.requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def served_rn50(server):
    """A random RN50-cloob saved in the original layout under the released file name on the server."""
    base_url, folder, requests = server
    source = random_model("RN50-cloob")
    torch.save(original_checkpoint(source, "RN50.json", hopfield_beta=8.0), folder / RN50_FILE)
    return source, base_url, requests


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_openclip_internals_still_exist():
    """Fails loudly when OpenCLIP moves what open_clip_cloob.pretrained hooks into."""
    assert isinstance(open_clip.pretrained._PRETRAINED, dict), "open_clip.pretrained._PRETRAINED is gone"
    assert callable(open_clip.pretrained.download_pretrained), "open_clip.pretrained.download_pretrained is gone"
    source = inspect.getsource(open_clip.factory.create_model)
    assert "download_pretrained(" in source, "create_model no longer calls factory.download_pretrained"
    assert open_clip.factory.download_pretrained.__module__ == "open_clip_cloob.pretrained", "hook not installed"


def test_import_registers_tags():
    assert open_clip_cloob  # the import above registered the tags
    for (model, tag), filename in RELEASED_CHECKPOINTS.items():
        assert tag in open_clip.list_pretrained_tags_by_model(model)
        assert open_clip.get_pretrained_url(model, tag) == CLOOB_DOWNLOAD_ROOT + filename
        assert open_clip.pretrained.get_pretrained_cfg(model, tag)["quick_gelu"] is True
    assert ("RN50-cloob", "yfcc15m") in open_clip.list_pretrained()


def test_other_tags_still_go_to_openclip(tmp_path):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"")
    assert open_clip.factory.download_pretrained({"file": str(weights)}) == str(weights)


@pytest.mark.slow
def test_yfcc15m_tag_downloads_once_converts_and_loads(served_rn50, cache_dir, monkeypatch):
    source, base_url, requests = served_rn50
    monkeypatch.setenv(MIRROR_ENV, base_url)

    model, _, preprocess = open_clip.create_model_and_transforms("RN50-cloob", pretrained="yfcc15m",
                                                                 cache_dir=str(cache_dir))
    again = open_clip.create_model("RN50-cloob", pretrained="yfcc15m", cache_dir=str(cache_dir))

    assert requests == [f"/{RN50_FILE}"]  # downloaded once; the second load used the cache
    assert sorted(path.name for path in cache_dir.iterdir()) == sorted(
        [RN50_FILE, RN50_FILE.replace(".pt", CONVERTED_SUFFIX)])
    model.eval()
    for expected, actual in zip(encode(source, 224), encode(model, 224)):
        assert torch.equal(expected, actual)
    assert all(torch.equal(again.state_dict()[key], value) for key, value in model.state_dict().items())
    assert preprocess.transforms[0].size == 224
    assert preprocess.transforms[0].interpolation.value == "bicubic"


@pytest.mark.slow
def test_benchmark_wrapper_resolves_the_tag(served_rn50, cache_dir, tmp_path, monkeypatch):
    _, base_url, requests = served_rn50
    monkeypatch.setenv(MIRROR_ENV, base_url)
    output = tmp_path / "dummy.json"
    benchmark.main(["eval", "--dataset", "dummy", "--model", "RN50-cloob", "--pretrained", "yfcc15m",
                    "--model_cache_dir", str(cache_dir), "--output", str(output), "--num_workers", "0",
                    "--batch_size", "1", "--no_amp", "--quiet"])
    result = json.loads(output.read_text())
    assert (result["model"], result["pretrained"]) == ("RN50-cloob", "yfcc15m")
    assert result["task"] == "zeroshot_classification"
    assert set(result["metrics"]) >= {"acc1", "mean_per_class_recall"}
    assert len(requests) <= 1  # at most the first download (when this test runs alone)


def test_missing_file_error_names_url_and_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, (tmp_path / "empty").as_uri())
    with pytest.raises(RuntimeError, match=rf"could not download .*empty/{RN50_FILE}.*{MIRROR_ENV}"):
        open_clip.create_model("RN50-cloob", pretrained="yfcc15m", cache_dir=str(tmp_path / "cache"))
    assert list((tmp_path / "cache").iterdir()) == []  # neither the file nor a .partial left behind


class _TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Announces 1000 bytes, sends 10 and closes: an interrupted download."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_interrupted_download_leaves_nothing_behind(tmp_path):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TruncatingHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(OSError, match="could not download"):
            download_file(f"http://127.0.0.1:{httpd.server_address[1]}/x.pt", tmp_path / "x.pt")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert list(tmp_path.iterdir()) == []
