"""report.html is self-contained and renders, tables and every figure, in headless Chromium."""
import base64
import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from synthetic_run import make_run

from bench.reporting.build import build_report

CHROMIUM = "/usr/bin/chromium"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# reports Chromium's own view: how many <img> it decoded (complete, non-zero natural width)
PROBE = ("<script>window.addEventListener('load',()=>{const im=[...document.images];"
         "document.body.setAttribute('data-decoded',im.filter(i=>i.complete&&i.naturalWidth>0)"
         ".length+'/'+im.length);});</script>")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing and we are root, else skipped."""
    if not Path(CHROMIUM).exists():
        if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip(f"{CHROMIUM} is missing and we are not root to `apt-get install chromium`")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:  # a stale package index: refresh once and retry
            subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=600)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0 or not Path(CHROMIUM).exists():
            pytest.skip(f"could not install chromium: {proc.stderr.strip()[-300:]}")
    return CHROMIUM


def dump_dom(browser: str, page: Path, profile: Path) -> str:
    """The DOM after load, from a headless Chromium that cannot reach any network."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class Tags(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags(html: str) -> list[tuple[str, dict]]:
    p = Tags()
    p.feed(html)
    return p.tags


def decode_png(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,"), src[:40]
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data.startswith(PNG_MAGIC)
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    # the fewest defenses that still give every table and figure
    defenses = ["none", "ppfr_fd", "mixup_fd", "mixup_rgb", "adamixup.k2-4", "duetface", "advface",
                "advface.eps0.1", "advface.eps0.3"]
    run_dir = make_run(tmp_path_factory.mktemp("html"), defenses=defenses, attacks=("resrec",),
                       seeds=(0, 1))
    (run_dir / "cells" / "duetface__resrec__s1.json").write_text('{"defense": "duetface", "att')
    with pytest.warns(UserWarning, match="duetface__resrec__s1.json"):
        return run_dir, build_report(run_dir)


def test_report_is_self_contained(report):
    run_dir, written = report
    html = written["report_html"].read_text()
    found = tags(html)
    assert not [t for t, _ in found if t in ("script", "link", "iframe", "object", "embed")]
    for tag, attrs in found:  # nothing to fetch: every src/href is inline or an in-page anchor
        for key in ("src", "href"):
            if key in attrs:
                assert attrs[key].startswith(("data:", "#")), (tag, attrs[key][:60])
    assert "@import" not in html and "url(" not in html
    imgs = [a["src"] for t, a in found if t == "img"]
    figures = [k for k in written if k.startswith("fig_")]
    assert len(imgs) == len(figures) == 4
    for src in imgs:
        assert decode_png(src).size[0] > 200
    assert '"run_id": "synth"' in html.replace("&quot;", '"')  # the resolved config
    assert "duetface__resrec__s1.json" in html  # the damaged cell is named in the report


def test_report_renders_in_headless_chromium(report, chromium, tmp_path):
    run_dir, written = report
    page = tmp_path / "probe.html"
    page.write_text(written["report_html"].read_text().replace("</body>", PROBE + "</body>"))
    dom = dump_dom(chromium, page, tmp_path / "profile")
    found = tags(dom)
    imgs = [a.get("src", "") for t, a in found if t == "img"]
    assert len(imgs) == 4 and all(decode_png(src) for src in imgs)
    assert re.search(r'data-decoded="4/4"', dom), "Chromium did not decode every figure"
    tables = [k for k in written if not k.startswith("fig_") and k != "report_html"]
    assert len([t for t, _ in found if t == "table"]) == len(tables) == 7  # + worst_case (§15)
    for name in tables:
        assert f"{name}.csv" in dom
    for text in ("ppfr_fd", "advface.eps0.3", "adamixup.k2-4", "±", "Resolved configuration"):
        assert text in dom


def test_probe_catches_a_broken_image(chromium, tmp_path):
    """The decode probe is not vacuous: an image Chromium cannot decode is not counted."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><img src='data:image/png;base64,iVBORw0KGgoAAAA'>"
                    f"{PROBE}</body></html>")
    assert 'data-decoded="0/1"' in dump_dom(chromium, page, tmp_path / "profile")
