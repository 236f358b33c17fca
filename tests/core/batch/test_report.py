"""report.json: written under our name only when the file there is ours (issue 13, item 9)."""

from __future__ import annotations

import json

import pytest

from napari_persam.core.batch.report import (
    REPORT_FORMAT,
    check_report_path,
    report_is_ours,
    write_report,
)


def test_only_reports_napari_persam_wrote_may_be_replaced(tmp_path):
    path = tmp_path / "report.json"
    assert report_is_ours(path)  # nothing there yet
    written = write_report(tmp_path, [], run={"model": "tiny"})
    assert written == path and json.loads(path.read_text())["format"] == REPORT_FORMAT
    assert report_is_ours(path)
    path.write_text(json.dumps({"run": {}, "summary": {}, "items": []}))  # an older version's
    assert report_is_ours(path)
    for theirs in ('{"my": "notes"}', "[1, 2]", "not json at all"):
        path.write_text(theirs)
        assert not report_is_ours(path)
        with pytest.raises(ValueError, match="was not written by napari-persam"):
            check_report_path(tmp_path)


def test_a_report_of_the_user_s_that_appears_during_a_run_is_kept(tmp_path):
    (tmp_path / "report.json").write_text('{"my": "notes"}')
    written = write_report(tmp_path, [{"status": "ok"}], run={})
    assert written.name == "report-1.json"
    assert (tmp_path / "report.json").read_text() == '{"my": "notes"}'
    assert json.loads(written.read_text())["summary"]["ok"] == 1
