"""The real kaggle client, end to end against the fake Kaggle on 127.0.0.1: submit, status, download, kernel push,
and every failure turned into a medkit error that never shows the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _fake_kaggle import KEY, TOKEN, USER, FakeKaggle, serve

from medkit.errors import OfflineError
from medkit.submit import (
    CredentialsError,
    SubmitError,
    download_files,
    find_credentials,
    kaggle_config_dir,
    list_submissions,
    push_kernel_bundle,
    submit_file,
)

RSNA = "rsna-intracranial-hemorrhage-detection"
API = "/api/v1/competitions.CompetitionApiService/"


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "submission.csv"
    path.write_text("ID,Label\nID_0fbf6a978_any,0.25\n")
    return path


def _methods(fake: FakeKaggle) -> list[str]:
    return [c.path.rsplit("/", 1)[-1] if c.method == "POST" else c.method for c in fake.calls]


# ---------------------------------------------------------------------------------------------- submitting
def test_submit_uploads_the_file_and_returns_the_ref_and_score(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    path = _file(tmp_path)
    result = submit_file(find_credentials(), RSNA, path, "first try", wait=5, every=0.05)
    assert result.ref == 4242 and result.message == "Successfully submitted"
    assert result.info is not None and result.info.status == "COMPLETE" and result.info.public_score == "0.0612"
    assert _methods(fake_kaggle) == ["StartSubmissionUpload", "PUT", "CreateSubmission", "ListSubmissions"]
    start, put, create = fake_kaggle.calls[:3]
    assert start.path == API + "StartSubmissionUpload" and start.host == "localhost"
    assert start.body["competitionName"] == RSNA and start.body["fileName"] == "submission.csv"
    assert start.body["contentLength"] == path.stat().st_size
    assert fake_kaggle.uploads["blob-1"] == path.read_bytes()  # the PUT carried the file itself
    assert create.body == {"competitionName": RSNA, "blobFileTokens": "blob-1", "submissionDescription": "first try"}
    assert start.auth.startswith("Basic ")  # the legacy key, as HTTP basic auth


def test_wait_zero_does_not_poll(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    result = submit_file(find_credentials(), RSNA, _file(tmp_path), "m", wait=0)
    assert result.ref == 4242 and result.info is None
    assert "ListSubmissions" not in _methods(fake_kaggle)


def test_wrong_key_is_a_401_error_that_never_shows_the_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    wrong = "wr0ng-key-9876543210"
    with serve(monkeypatch, tmp_path, key=wrong) as fake, pytest.raises(SubmitError) as info:
        submit_file(find_credentials(), RSNA, _file(tmp_path), "m")
    assert "401" in info.value.message and "KAGGLE_USERNAME/KAGGLE_KEY" in info.value.message
    assert wrong not in str(info.value) and KEY not in str(info.value)
    assert fake.uploads == {} and _methods(fake) == ["StartSubmissionUpload"]


def test_unknown_competition_is_a_404_with_a_suggestion(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    with pytest.raises(SubmitError) as info:
        submit_file(find_credentials(), "rsna-intracranial-hemorrhage-detectoin", _file(tmp_path), "m")
    assert "not found on Kaggle (404" in info.value.message
    assert f"did you mean '{RSNA}'" in info.value.message
    assert fake_kaggle.uploads == {}


def test_failed_upload_submits_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    failed = "upload of submission.csv to Kaggle failed; nothing was submitted"
    with serve(monkeypatch, tmp_path, upload_status=403) as fake, pytest.raises(SubmitError, match=failed):
        submit_file(find_credentials(), RSNA, _file(tmp_path), "m")
    assert _methods(fake) == ["StartSubmissionUpload", "PUT"]  # no CreateSubmission after a refused upload


def test_a_zero_submission_ref_does_not_count(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with serve(monkeypatch, tmp_path, submission_ref=0) as fake, pytest.raises(SubmitError, match="did not register"):
        submit_file(find_credentials(), RSNA, _file(tmp_path), "m", wait=5)
    assert "CreateSubmission" in _methods(fake) and "ListSubmissions" not in _methods(fake)


def test_access_token_is_sent_as_a_bearer_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with serve(monkeypatch, tmp_path) as fake:
        monkeypatch.delenv("KAGGLE_KEY")
        monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
        creds = find_credentials()
        assert creds.method == "access token (KAGGLE_API_TOKEN)"
        assert submit_file(creds, RSNA, _file(tmp_path), "m").ref == 4242
    assert _methods(fake)[0] == "IntrospectToken"
    assert {c.auth for c in fake.calls if c.method == "POST" and "Competition" in c.path} == {f"Bearer {TOKEN}"}


def test_an_unreachable_kaggle_is_an_offline_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with serve(monkeypatch, tmp_path) as fake:
        pass  # stopped: its port now refuses connections
    with pytest.raises(OfflineError, match="cannot reach Kaggle"):
        submit_file(find_credentials(), RSNA, _file(tmp_path), "m")
    assert fake.calls == []


# ---------------------------------------------------------------------------------------------- status, download
def test_list_submissions_reads_status_and_scores(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    creds = find_credentials()
    assert list_submissions(creds, RSNA) == []
    submit_file(creds, RSNA, _file(tmp_path), "one", wait=0)
    (latest,) = list_submissions(creds, RSNA, limit=5)
    assert (latest.ref, latest.status, latest.public_score, latest.description) == (4242, "COMPLETE", "0.0612", "one")


def test_download_all_files_unzips_them(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    fake_kaggle.files = {"sample_submission.csv": b"ID,Label\nID_0fbf6a978_any,0.5\n", "test.csv": b"image\n"}
    files = download_files(find_credentials(), RSNA, tmp_path / "data")
    assert sorted(f.name for f in files) == ["sample_submission.csv", "test.csv"]
    assert (tmp_path / "data" / "sample_submission.csv").read_bytes() == fake_kaggle.files["sample_submission.csv"]
    assert not list((tmp_path / "data").glob("*.zip"))


def test_download_one_file(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    (path,) = download_files(find_credentials(), RSNA, tmp_path / "one", "sample_submission.csv")
    assert path.read_bytes() == fake_kaggle.files["sample_submission.csv"]
    assert _methods(fake_kaggle) == ["DownloadDataFile", "GET"]
    with pytest.raises(SubmitError, match="404"):
        download_files(find_credentials(), RSNA, tmp_path / "one", "no_such_file.csv")


# ---------------------------------------------------------------------------------------------- kernel push
def test_push_kernel_bundle_creates_the_dataset_and_the_notebook(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    dataset, kernel = tmp_path / "b" / "dataset", tmp_path / "b" / "kernel"
    (dataset / "runs" / "r1").mkdir(parents=True)
    (dataset / "runs" / "r1" / "run.json").write_text("{}")
    (dataset / "dataset-metadata.json").write_text(
        json.dumps(
            {"title": "medkit rsna weights", "id": f"{USER}/medkit-rsna-weights", "licenses": [{"name": "CC0-1.0"}]}
        )
    )
    kernel.mkdir()
    (kernel / "run.py").write_text("print('hi')\n")
    meta = {
        "id": f"{USER}/medkit-rsna-inference",
        "title": "medkit rsna inference",
        "code_file": "run.py",
        "language": "python",
        "kernel_type": "script",
        "enable_internet": False,
        "dataset_sources": [f"{USER}/medkit-rsna-weights"],
        "competition_sources": [RSNA],
    }
    (kernel / "kernel-metadata.json").write_text(json.dumps(meta))
    pushed = push_kernel_bundle(find_credentials(), dataset, kernel, "v1")
    assert pushed.dataset == f"{USER}/medkit-rsna-weights" and pushed.kernel == meta["id"] and pushed.version == 1
    methods = _methods(fake_kaggle)
    assert methods[0] == "GetDatasetStatus" and "CreateDataset" in methods and methods[-1] == "SaveKernel"
    assert "PUT" in methods  # the zipped runs folder was uploaded
    saved = fake_kaggle.calls[-1].body
    assert saved["enableInternet"] is False and saved["competitionDataSources"] == [RSNA]
    assert saved["datasetDataSources"] == [f"{USER}/medkit-rsna-weights"] and saved["text"] == "print('hi')\n"


# ---------------------------------------------------------------------------------------------- credentials
def _clean_env(tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "KAGGLE_CONFIG_DIR": str(tmp_path / "cfg")}


def test_credentials_from_kaggle_json_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _clean_env(tmp_path)
    monkeypatch.setenv("HOME", env["HOME"])
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "kaggle.json").write_text(json.dumps({"username": "alice", "key": "alice-key-1234"}))
    creds = find_credentials(env)
    assert creds.username == "alice" and creds.method.startswith("kaggle.json (") and "alice-key-1234" in creds.secrets
    assert "alice-key-1234" not in repr(creds)
    assert creds.scrub("key=alice-key-1234") == "key=***"
    env_creds = find_credentials({**env, "KAGGLE_USERNAME": "bob", "KAGGLE_KEY": "bob-key-5678"})
    assert env_creds.username == "bob" and env_creds.method == "KAGGLE_USERNAME/KAGGLE_KEY"


def test_config_dir_falls_back_to_xdg_when_there_is_no_dot_kaggle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert kaggle_config_dir({"XDG_CONFIG_HOME": str(tmp_path / "xdg")}) == tmp_path / "xdg" / "kaggle"
    (tmp_path / "home" / ".kaggle").mkdir(parents=True)
    assert kaggle_config_dir({}) == tmp_path / "home" / ".kaggle"
    assert kaggle_config_dir({"KAGGLE_CONFIG_DIR": str(tmp_path / "c")}) == tmp_path / "c"


def test_access_token_file_and_missing_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _clean_env(tmp_path)
    monkeypatch.setenv("HOME", env["HOME"])
    with pytest.raises(CredentialsError, match="no Kaggle credentials found") as info:
        find_credentials(env)
    assert "KAGGLE_API_TOKEN" in (info.value.hint or "") and str(tmp_path / "cfg") in (info.value.hint or "")
    (tmp_path / "home" / ".kaggle").mkdir(parents=True)
    (tmp_path / "home" / ".kaggle" / "access_token").write_text(TOKEN + "\n")
    creds = find_credentials(env)
    assert creds.method == "access token (~/.kaggle/access_token)" and creds.secrets == (TOKEN,)


def test_broken_kaggle_json_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _clean_env(tmp_path)
    monkeypatch.setenv("HOME", env["HOME"])
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "kaggle.json").write_text("{not json")
    with pytest.raises(CredentialsError, match="not a valid kaggle.json"):
        find_credentials(env)
