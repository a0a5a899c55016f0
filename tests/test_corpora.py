from pathlib import Path

import pytest

from textgen import corpora
from textgen.corpus_cache import cache_root

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_checkout(tmp_path, monkeypatch) -> Path:
    """textgen running from a source tree in tmp_path, with no TEXTGEN_CACHE_DIR set."""
    for name in ("corpora", "textgen"):
        (tmp_path / name).mkdir()
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    monkeypatch.setattr(corpora, "_PACKAGE", tmp_path / "textgen")
    monkeypatch.delenv("TEXTGEN_CACHE_DIR")
    return tmp_path


def test_this_source_tree_is_a_checkout():
    assert corpora.source_checkout(REPO / "textgen") == REPO
    assert (REPO / "corpora" / "README.md").is_file()  # the folder exists in every clone


def test_in_a_checkout_named_corpora_go_to_its_corpora_folder(fake_checkout):
    assert corpora.fetch("pydoc") == fake_checkout / "corpora" / "pydoc_topics.txt"
    assert (fake_checkout / "corpora" / "pydoc_topics.txt").is_file()


def test_a_set_cache_dir_wins_over_the_checkout(fake_checkout, monkeypatch):
    monkeypatch.setenv("TEXTGEN_CACHE_DIR", str(fake_checkout / "cache"))
    assert corpora.corpora_dir() == fake_checkout / "cache" / "corpora"


def test_an_installed_package_uses_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "_PACKAGE", tmp_path / "site-packages" / "textgen")
    monkeypatch.delenv("TEXTGEN_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert corpora.corpora_dir() == tmp_path / "home" / ".cache" / "textgen" / "corpora"
    assert cache_root() == tmp_path / "home" / ".cache" / "textgen" / "tokens"  # the same cache folder


def test_a_download_lands_in_the_checkout_corpora_folder(shakespeare_mirror, fake_checkout):
    path = corpora.fetch("shakespeare")
    assert path == fake_checkout / "corpora" / "tinyshakespeare.txt"
    assert path.stat().st_size == 1_115_394
