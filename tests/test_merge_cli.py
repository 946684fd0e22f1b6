"""`zoopt serve-merge` / `zoopt merge` on bad input: one line naming the option and
the file (and line), exit status 2, no traceback."""
import json
import os

import pytest

from zoopt.cli import main


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv("ZOOPT_MERGE_TOKEN", "t0k")
    monkeypatch.delenv("ZOOPT_DEBUG", raising=False)


def run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def one_line_naming(code, err, *words):
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


def test_serve_merge_missing_folders_and_files(capsys, tmp_path):
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    missing = str(tmp_path / "nope")
    one_line_naming(*run(capsys, "serve-merge", "--base", str(tmp_path), "--adapters", missing), "--adapters", missing)
    one_line_naming(*run(capsys, "serve-merge", "--base", missing, "--adapters", str(adapters)), str(adapters))
    from test_merge import make_pool

    make_pool(str(adapters), n=2)
    one_line_naming(*run(capsys, "serve-merge", "--base", missing, "--adapters", str(adapters)), "--base", missing)
    one_line_naming(*run(capsys, "serve-merge", "--base", str(tmp_path), "--adapters", str(adapters)),
                    "--base", "config.json")
    presets = tmp_path / "presets.json"
    one_line_naming(*run(capsys, "serve-merge", "--base", str(tmp_path), "--adapters", str(adapters),
                         "--presets", str(presets)), "--presets", str(presets))
    presets.write_text('{"a": ["x"],\n oops}')
    one_line_naming(*run(capsys, "serve-merge", "--base", str(tmp_path), "--adapters", str(adapters),
                         "--presets", str(presets)), f"{presets}:2")
    one_line_naming(*run(capsys, "serve-merge", "--base", str(tmp_path), "--adapters", str(adapters),
                         "--slots", "0"), "--slots")


def test_serve_merge_without_a_token(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("ZOOPT_MERGE_TOKEN")
    one_line_naming(*run(capsys, "serve-merge", "--base", str(tmp_path), "--adapters", str(tmp_path)),
                    "ZOOPT_MERGE_TOKEN")


def test_merge_missing_and_broken_session_data(capsys, tmp_path):
    base = ["merge", "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "out")]
    missing = str(tmp_path / "val.jsonl")
    one_line_naming(*run(capsys, *base, "--session-data", missing), "--session-data", missing)
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "a", "answer": "b"}) + "\n{not json\n")
    one_line_naming(*run(capsys, *base, "--session-data", str(data)), f"{data}:2")
    data.write_text(json.dumps({"prompt": "a"}) + "\n")
    one_line_naming(*run(capsys, *base, "--session-data", str(data)), f"{data}:1", "answer")
    data.write_bytes(b"\xff\xfe\x00garbage")
    one_line_naming(*run(capsys, *base, "--session-data", str(data)), str(data))
    data.write_text("\n\n")
    one_line_naming(*run(capsys, *base, "--session-data", str(data)), "no records")
    data.write_text(json.dumps({"prompt": "a", "answer": "b"}) + "\n")
    one_line_naming(*run(capsys, *base, "--session-data", str(data), "--template", "{prompt.__class__}"), "template")
    one_line_naming(*run(capsys, *base, "--session-data", str(data), "--budget", "10"), "--budget")
    assert not os.path.exists(tmp_path / "out")  # nothing written before the input is known good


def test_a_resume_file_for_other_records_or_garbage_is_refused(tmp_path):
    from zoopt.merge.run import STATE, fingerprint, run_merge

    records = [{"prompt": "a", "answer": "b"}]
    out = tmp_path / "out"
    out.mkdir()
    state = {"fingerprint": fingerprint(records, "{prompt}", "all", 48, 8, 1),
             "session": {"session": "s", "pool_size": 4, "adapters": ["a"] * 4}, "cache": []}
    (out / STATE).write_text(json.dumps(state))
    other = [{"prompt": "a", "answer": "c"}]
    with pytest.raises(ValueError, match="written for other records"):
        run_merge("http://127.0.0.1:9", "t", other, str(out), budget=48, popsize=8, seed=1, progress=False)
    for garbage in ("{", '{"session": 3, "cache": []}', "\x00\x01"):
        (out / STATE).write_text(garbage)
        with pytest.raises(ValueError, match=STATE):
            run_merge("http://127.0.0.1:9", "t", records, str(out), budget=48, popsize=8, seed=1, progress=False)
