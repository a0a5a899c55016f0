import json

from tests.conftest import OLD_BUNDLE, with_added_fields
from textgen.resume import load_resume_state


def test_resume_state_survives_a_crash_between_its_two_renames(bundle_copy):
    expected = load_resume_state(bundle_copy).progress
    (bundle_copy / "resume").rename(bundle_copy / ".resume-old")  # where a crash mid-swap leaves it
    assert load_resume_state(bundle_copy).progress == expected


def test_a_resume_state_saved_by_earlier_code_loads_and_its_document_is_rebuilt_identically():
    from textgen.bundle import build_document

    saved = with_added_fields(json.loads((OLD_BUNDLE / "resume" / "state.json").read_text()))
    state = load_resume_state(OLD_BUNDLE)
    assert state.progress == saved["state"] and state.progress["step"] == 3
    assert {key.split("/")[0] for key in state.arrays} == {"model", "optimizer"}
    again = build_document(state.config, state.progress, saved["files"])
    assert set(again["versions"]) == set(saved["versions"])
    assert {**again, "versions": None} == {**saved, "versions": None}
