import json

from tests.conftest import OLD_BUNDLE, with_added_fields
from textgen.resume import load_resume_state, saved_run_settings


def test_resume_state_survives_a_crash_between_its_two_renames(bundle_copy):
    expected = load_resume_state(bundle_copy).progress
    (bundle_copy / "resume").rename(bundle_copy / ".resume-old")  # where a crash mid-swap leaves it
    assert load_resume_state(bundle_copy).progress == expected


def test_a_resume_state_saved_by_earlier_code_loads_and_its_document_is_rebuilt_identically():
    from textgen.bundle import build_document

    saved = with_added_fields(json.loads((OLD_BUNDLE / "resume" / "state.json").read_text()))
    state = load_resume_state(OLD_BUNDLE)
    assert state.progress == saved["state"] and state.progress["step"] == 3
    assert saved_run_settings(OLD_BUNDLE) == {}  # saved before run settings were kept: resumes with defaults
    assert {key.split("/")[0] for key in state.arrays} == {"model", "optimizer"}
    again = build_document(state.config, state.progress, saved["files"])
    assert set(again["versions"]) == set(saved["versions"])
    assert {**again, "versions": None} == {**saved, "versions": None}


def test_a_failed_periodic_resume_save_is_reported_and_training_goes_on(tmp_path, corpus_file, monkeypatch, capsys):
    import textgen
    from textgen import atomic
    from tests.conftest import TINY

    monkeypatch.setattr(atomic, "_hits", {})
    monkeypatch.setenv("TEXTGEN_FAIL_AT", "resume-swapped")  # the 2nd save (step 4), between its renames
    bundle = textgen.train(str(corpus_file), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                           max_steps=6, checkpoint_every=2, **TINY)
    out = capsys.readouterr().out
    assert "Resume state not saved at step 4" in out and "the previous one is kept" in out, out
    assert load_resume_state(bundle).progress["step"] == 6  # the next save retried


def test_a_failed_resume_save_keeps_the_previous_state_in_place(tmp_path, corpus_file, monkeypatch):
    import textgen
    from textgen import atomic
    from tests.conftest import TINY

    monkeypatch.setattr(atomic, "_hits", {})
    monkeypatch.setenv("TEXTGEN_FAIL_AT", "resume-swapped")  # the last save (at the end), between its renames
    bundle = textgen.train(str(corpus_file), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                           max_steps=2, checkpoint_every=2, **TINY)
    assert (bundle / "resume" / "state.json").is_file() and not (bundle / ".resume-old").exists()
    assert load_resume_state(bundle).progress["step"] == 2
