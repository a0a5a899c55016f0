"""Novelty: equal to a training document, and the longest span copied from the corpus, exactly."""

from __future__ import annotations

from textgen.config import TokenizerConfig
from textgen.novelty import CorpusIndex, Novelty, kgram_hashes


def test_a_copy_and_the_longest_copied_span_are_found_exactly():
    index = CorpusIndex(["abcdefghij", "the cat sat on the mat"], k=4)
    assert index.check("abcdefghij").copy and index.check("abcdefghij").longest == 10
    assert index.check("xxabcdefyy") == Novelty(False, 6)  # "abcdef"
    assert index.check("a cat sat on a mat").longest == len(" cat sat on ")
    assert index.check("zz").longest == 0  # shorter than k
    assert index.check("hijthe").longest == 0  # "ij" + "the": no k-gram spans two documents


def test_equal_texts_hash_equal_and_k_grams_count_every_start():
    assert kgram_hashes("abcab", 2).tolist()[0] == kgram_hashes("abcab", 2).tolist()[3]
    assert len(kgram_hashes("abcdef", 4)) == 3 and len(kgram_hashes("abc", 4)) == 0


def test_an_index_of_files_reads_them_as_the_bundle_was_trained(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first document here\nsecond one\n", encoding="utf-8")
    by_lines = CorpusIndex.of_files([path], TokenizerConfig(docs="lines"), k=4)
    assert by_lines.check("second one").copy and by_lines.check("here\nsecond").longest == len("second")
    as_text = CorpusIndex.of_files([path], TokenizerConfig(), k=4)
    assert as_text.check("here\nsecond").longest == len("here\nsecond")
