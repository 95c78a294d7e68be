"""The shared record reader: every format, and errors that name the file and the line."""

import json

import pytest

from ssp.records import RecordsError, read_located, read_log, read_records, read_text


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_csv_and_tsv_keep_multiline_cells_and_fill_short_rows(tmp_path):
    csv_file = write(tmp_path / "t.csv", b'goal,ctx\n"two\nlines",x\nshort\n')
    assert read_located(csv_file) == [
        ("line 3", {"goal": "two\nlines", "ctx": "x"}),
        ("line 4", {"goal": "short", "ctx": ""}),
    ]
    tsv_file = write(tmp_path / "t.TSV", b"goal\tctx\na, b\tc\n")
    assert read_records(tsv_file) == [{"goal": "a, b", "ctx": "c"}]


def test_json_lines_skip_blank_lines_and_keep_u2028_inside_strings(tmp_path):
    body = '{"prompt": "a\u2028b"}\n\n{"prompt": "c"}\n'.encode()
    for suffix in (".jsonl", ".ndjson"):
        assert read_located(write(tmp_path / f"t{suffix}", body)) == [
            ("line 1", {"prompt": "a\u2028b"}),
            ("line 3", {"prompt": "c"}),
        ]


@pytest.mark.parametrize(
    "doc, rows",
    [
        ([{"prompt": "a"}, {"prompt": "b"}], [{"prompt": "a"}, {"prompt": "b"}]),
        ({"version": 1, "data": [{"prompt": "a"}]}, [{"prompt": "a"}]),  # an object wrapping one list
        ({"prompt": "a", "tags": ["x"]}, [{"prompt": "a", "tags": ["x"]}]),  # a single record
        ({"data": []}, []),
    ],
)
def test_json_documents(tmp_path, doc, rows):
    assert read_records(write(tmp_path / "t.json", json.dumps(doc, indent=2).encode())) == rows


def test_json_with_one_object_a_line_reads_as_json_lines(tmp_path):
    path = write(tmp_path / "t.json", b'{"prompt": "a"}\n{"prompt": "b"}\n')
    assert read_located(path) == [("line 1", {"prompt": "a"}), ("line 2", {"prompt": "b"})]
    assert read_records(write(tmp_path / "empty.json", b"\n")) == []


def test_text_is_one_prompt_a_line_without_comments(tmp_path):
    path = write(tmp_path / "t.txt", b"# comment\n  first  \n\nsecond\n")
    assert read_located(path) == [("line 2", {"prompt": "first"}), ("line 4", {"prompt": "second"})]


def test_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    path = tmp_path / "t.parquet"
    pd.DataFrame({"prompt": ["a", "b"]}).to_parquet(path)
    assert read_located(path) == [("row 1", {"prompt": "a"}), ("row 2", {"prompt": "b"})]
    with pytest.raises(RecordsError, match=r"bad\.parquet: not a readable Parquet file"):
        read_records(write(tmp_path / "bad.parquet", b"not parquet"))


@pytest.mark.parametrize("name", ["t.csv", "t.jsonl", "t.json", "t.txt"])
def test_a_utf8_byte_order_mark_is_dropped(tmp_path, name):
    body = {
        "t.csv": b"prompt\nfirst\n",
        "t.jsonl": b'{"prompt": "first"}\n',
        "t.json": b'[{"prompt": "first"}]',
        "t.txt": b"first\n",
    }[name]
    assert read_records(write(tmp_path / name, b"\xef\xbb\xbf" + body)) == [{"prompt": "first"}]


ERRORS = {  # file name, bytes -> the message after "PATH: "
    "bad.jsonl": (b'{"a": 1}\n\n{broken\n', "line 3: invalid JSON (Expecting property name enclosed in double quotes)"),
    "list.ndjson": (b'{"a": 1}\n["b"]\n', "line 2: expected a JSON object, got list"),
    "deep.jsonl": (b'{"a": 1}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n", "line 2: invalid JSON (nested too deeply)"),
    "deep.json": (b"[" * 100_000 + b"]" * 100_000, "invalid JSON (nested too deeply)"),
    "bad.json": (b'[\n  {"a": 1},\n  {"a": \n]', "line 4: invalid JSON (Expecting value)"),
    "bad-line.json": (b'{"a": 1}\n{"a": 2\n', "line 2: invalid JSON (Expecting ',' delimiter)"),
    "scalars.json": (b'[{"a": 1}, 2]', "item 2: expected a JSON object, got int"),
    "number.json": (b"5", "expected a JSON list of objects, got int"),
    "empty.csv": (b"", "empty CSV (no header row)"),
    "huge.csv": (b"goal\nok\n" + b"a" * 200_000 + b"\n", "line 3: field larger than field limit (131072)"),
    "latin1.csv": (b"goal\nfine\ncaf\xe9\n", "line 3: not valid UTF-8 (byte offset 13)"),
    "bom-latin1.txt": (b"\xef\xbb\xbfok\ncaf\xe9\n", "line 2: not valid UTF-8 (byte offset 9)"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors_name_the_file_and_line(tmp_path, name):
    data, message = ERRORS[name]
    path = write(tmp_path / name, data)
    with pytest.raises(RecordsError) as err:
        read_records(path)
    assert str(err.value) == f"{path}: {message}"


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(RecordsError, match=r"gone\.csv: file not found$"):
        read_records(tmp_path / "gone.csv")
    with pytest.raises(RecordsError, match=r"gone\.parquet: file not found$"):
        read_records(tmp_path / "gone.parquet")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(RecordsError, match=r"dir\.jsonl: not a file$"):
        read_text(tmp_path / "dir.jsonl")


def test_logs_skip_lines_a_crash_cut_off_and_keep_u2028(tmp_path):
    log = write(
        tmp_path / "metrics.jsonl",
        json.dumps({"step": 1, "text": "a\u2028b"}, ensure_ascii=False).encode() + b'\n[1]\n\n{"step": 2, "tr',
    )
    assert read_log(log) == [{"step": 1, "text": "a\u2028b"}]
    assert read_log(tmp_path / "missing.jsonl") == []
