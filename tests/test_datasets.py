"""toolkit.datasets: JSONL, CSV and Parquet rows in MLflow's shape, streamed one at a time."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from toolkit.datasets import Row, count_rows, file_digest, read_rows
from toolkit.errors import DatasetError
from toolkit.scorers import builtin_scorers, score

ROWS = [
    {"inputs": {"question": "What is 2 + 2?"}, "expectations": {"expected_response": "4"}},
    {"inputs": {"question": "Capital of France?"}, "expectations": {"expected_contains": ["Paris"]}},
    {"inputs": {"question": "No expectations here"}},
]


def write_jsonl(path: Path, records: list[object], *, blank_lines: bool = False) -> Path:
    lines = [json.dumps(record) for record in records]
    text = ("\n\n   \n" if blank_lines else "\n").join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- JSONL


def test_jsonl_rows_have_index_inputs_and_expectations(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", ROWS)

    rows = list(read_rows(path))

    assert rows == [
        Row(0, {"question": "What is 2 + 2?"}, {"expected_response": "4"}),
        Row(1, {"question": "Capital of France?"}, {"expected_contains": ["Paris"]}),
        Row(2, {"question": "No expectations here"}, {}),
    ]


def test_jsonl_blank_lines_are_skipped_and_do_not_shift_the_index(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", ROWS, blank_lines=True)

    rows = list(read_rows(path))

    assert [row.index for row in rows] == [0, 1, 2]
    assert [row.inputs["question"] for row in rows] == [r["inputs"]["question"] for r in ROWS]
    assert count_rows(path) == 3


def test_json_suffix_is_read_as_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.json", ROWS[:2])

    assert [row.inputs for row in read_rows(path)] == [ROWS[0]["inputs"], ROWS[1]["inputs"]]


def test_inputs_need_not_be_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"inputs": "just a string"}])

    assert list(read_rows(path)) == [Row(0, "just a string", {})]


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"inputs": {"q": "unterminated"\n', encoding="utf-8")

    rows = read_rows(path)
    assert next(rows).index == 0  # the good row before the broken one is still yielded
    with pytest.raises(DatasetError) as caught:
        next(rows)

    message = str(caught.value)
    assert f"{path}:3:" in message  # line 3 in the file (blank line 2 counted), not row 2
    assert "not valid JSON" in message


@pytest.mark.parametrize(
    ("record", "line"),
    [
        ({"question": "no inputs key"}, 2),
        (["inputs", "a list"], 2),
        ("a bare string", 2),
    ],
)
def test_row_without_inputs_names_file_line_and_shows_the_shape(
    tmp_path: Path, record: object, line: int
) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [ROWS[0], record])

    with pytest.raises(DatasetError) as caught:
        list(read_rows(path))

    message = str(caught.value)
    assert f"{path}:{line}:" in message
    assert "'inputs'" in message
    assert '{"inputs": {' in message  # an example of the right shape


@pytest.mark.parametrize("expectations", ["a string", 42, ["a", "list"]])
def test_expectations_not_an_object_names_file_and_line(tmp_path: Path, expectations: object) -> None:
    bad = {"inputs": {"q": 1}, "expectations": expectations}
    path = write_jsonl(tmp_path / "data.jsonl", [ROWS[0], ROWS[1], bad])

    with pytest.raises(DatasetError) as caught:
        list(read_rows(path))

    message = str(caught.value)
    assert f"{path}:3:" in message
    assert "'expectations' must be an object" in message


def test_expectations_error_shows_an_example_of_the_shape(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"inputs": {"q": 1}, "expectations": "yes"}])

    with pytest.raises(DatasetError) as caught:
        list(read_rows(path))

    assert '"expectations": {' in str(caught.value)


@pytest.mark.parametrize("expectations", [[], "", 0, False])
def test_falsy_expectations_that_are_not_objects_are_refused(tmp_path: Path, expectations: object) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"inputs": {"q": 1}, "expectations": expectations}])

    with pytest.raises(DatasetError, match="'expectations' must be an object"):
        list(read_rows(path))


def test_null_expectations_mean_none(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"inputs": {"q": 1}, "expectations": None}])

    assert list(read_rows(path)) == [Row(0, {"q": 1}, {})]


def test_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"

    with pytest.raises(DatasetError) as caught:
        list(read_rows(missing))

    assert str(missing) in str(caught.value)
    assert "--data" in str(caught.value)


def test_a_directory_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        list(read_rows(tmp_path))


def test_count_rows_of_a_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError):
        count_rows(tmp_path / "nope.jsonl")


# --------------------------------------------------------------------------- CSV


def test_csv_with_dotted_columns(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text(
        "inputs.question,inputs.context,expectations.expected_response,notes\n"
        "What is 2 + 2?,math,4,ignored\n"
        "Capital of France?,geo,Paris,ignored\n",
        encoding="utf-8",
    )

    rows = list(read_rows(path))

    assert rows == [
        Row(0, {"question": "What is 2 + 2?", "context": "math"}, {"expected_response": "4"}),
        Row(1, {"question": "Capital of France?", "context": "geo"}, {"expected_response": "Paris"}),
    ]
    assert count_rows(path) == 2


def test_csv_with_json_columns(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["inputs", "expectations"])
        writer.writerow(
            [json.dumps({"question": "Q1", "n": 1}), json.dumps({"expected_contains": ["a", "b"]})]
        )
        writer.writerow([json.dumps({"question": "Q2"}), ""])

    rows = list(read_rows(path))

    assert rows == [
        Row(0, {"question": "Q1", "n": 1}, {"expected_contains": ["a", "b"]}),
        Row(1, {"question": "Q2"}, {}),
    ]
    assert count_rows(path) == 2


def test_csv_bad_json_cell_names_file_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text('inputs\n"{""q"": 1}"\n{not json\n', encoding="utf-8")

    with pytest.raises(DatasetError) as caught:
        list(read_rows(path))

    message = str(caught.value)
    assert f"{path}:row 2" in message
    assert "'inputs'" in message


def test_csv_without_inputs_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("question,expectations.expected_response\nWhat?,4\n", encoding="utf-8")

    with pytest.raises(DatasetError) as caught:
        list(read_rows(path))

    assert f"{path}:row 1" in str(caught.value)
    assert '{"inputs": {' in str(caught.value)


def test_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes("\ufeffinputs.question,expectations.expected_response\nWhat?,4\n".encode())

    assert list(read_rows(path)) == [Row(0, {"question": "What?"}, {"expected_response": "4"})]


def test_csv_empty_expectation_cell_means_no_expectation(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text(
        "inputs.question,expectations.expected_response\nWhat?,4\nOpen question,\n", encoding="utf-8"
    )

    rows = list(read_rows(path))

    assert rows[1].expectations == {}


def test_count_rows_of_csv_with_multiline_cells(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text('inputs.question\n"line one\nline two\nline three"\nshort\n', encoding="utf-8")

    assert len(list(read_rows(path))) == 2
    assert count_rows(path) == 2


# --------------------------------------------------------------------------- Parquet


def test_parquet_with_struct_columns(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "data.parquet"
    table = pa.table(
        {
            "inputs": [{"question": f"Q{i}", "n": i} for i in range(2500)],  # > one 1024-row batch
            "expectations": [{"expected_response": f"A{i}"} for i in range(2500)],
        }
    )
    pq.write_table(table, path)

    rows = list(read_rows(path))

    assert len(rows) == 2500
    assert rows[0] == Row(0, {"question": "Q0", "n": 0}, {"expected_response": "A0"})
    assert rows[2499] == Row(2499, {"question": "Q2499", "n": 2499}, {"expected_response": "A2499"})
    assert [row.index for row in rows] == list(range(2500))  # continuous across batches
    assert count_rows(path) == 2500


def test_parquet_with_json_string_columns(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "data.pq"
    pq.write_table(
        pa.table(
            {
                "inputs": [json.dumps({"question": "Q0"}), json.dumps({"question": "Q1"})],
                "expectations": [json.dumps({"expected_regex": "^A"}), ""],
            }
        ),
        path,
    )

    assert list(read_rows(path)) == [
        Row(0, {"question": "Q0"}, {"expected_regex": "^A"}),
        Row(1, {"question": "Q1"}, {}),
    ]
    assert count_rows(path) == 2


def test_parquet_bad_json_string_names_the_row(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"inputs": [json.dumps({"q": 1}), "{oops"]}), path)

    with pytest.raises(DatasetError) as caught:
        list(read_rows(path))

    assert f"{path}:row 2" in str(caught.value)


def test_parquet_without_inputs_column_is_refused(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"question": ["Q0"]}), path)

    with pytest.raises(DatasetError, match="row 1"):
        list(read_rows(path))


def test_parquet_struct_row_missing_an_expectation_is_not_scored_on_it(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "data.parquet"
    pq.write_table(
        pa.table(
            {
                "inputs": [{"q": "a"}, {"q": "b"}],
                "expectations": [{"expected_response": "A"}, {"expected_contains": ["b"]}],
            }
        ),
        path,
    )
    second = list(read_rows(path))[1]

    scores = score(builtin_scorers(), second.inputs, "b", second.expectations)

    assert scores == {"contains": True}


# --------------------------------------------------------------------------- digest


def test_file_digest_is_sha256_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    content = os.urandom(3 * (1 << 20) + 17)  # spans several 1 MiB blocks
    path.write_bytes(content)

    assert file_digest(path) == hashlib.sha256(content).hexdigest()
    path.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    assert file_digest(path) != hashlib.sha256(content).hexdigest()


# --------------------------------------------------------------------------- streaming

BIG_ROWS = 200_000


@pytest.fixture(scope="module")
def big_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    line = (
        '{"inputs": {"question": "question number %d, padded to make the row longer"}, '
        '"expectations": {"expected_response": "answer %d"}}\n'
    )
    path.write_text("".join(line % (i, i) for i in range(BIG_ROWS)), encoding="utf-8")
    return path


def _read_position(path: Path) -> int | None:
    """The offset of this process's open descriptor on ``path`` (Linux /proc), None if not open."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                with open(f"/proc/self/fdinfo/{fd}") as info:
                    return int(info.readline().split()[1])  # "pos:\t<offset>"
        except OSError:
            continue
    return None


def test_count_rows_of_a_large_file(big_jsonl: Path) -> None:
    assert count_rows(big_jsonl) == BIG_ROWS


def test_read_rows_streams_without_holding_the_file_in_memory(big_jsonl: Path) -> None:
    size = big_jsonl.stat().st_size
    assert size > 20_000_000  # the whole file, as lines, would take far more than the bound below

    tracemalloc.start()
    try:
        rows = read_rows(big_jsonl)
        first = [next(rows) for _ in range(3)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        assert [row.index for row in first] == [0, 1, 2]
        assert first[2].inputs["question"].startswith("question number 2,")
        assert peak < 2_000_000, f"reading 3 rows allocated {peak} bytes: the file was read whole"
        if os.path.isdir("/proc/self/fdinfo"):
            position = _read_position(big_jsonl)
            assert position is not None, "the generator should keep the file open while suspended"
            assert position < size // 100, f"read {position} of {size} bytes for 3 rows"
    finally:
        rows.close()
    assert _read_position(big_jsonl) is None  # closing the generator closes the file


# --------------------------------------------------------------------------- whole-file check


def test_count_rows_checks_every_row_and_names_the_bad_line(tmp_path: Path) -> None:
    """An evaluation counts rows before the first one runs: a bad line 80 of 100 must fail there."""
    lines = [json.dumps({"inputs": {"question": f"q{n}"}}) for n in range(100)]
    lines[79] = '{"inputs": {"question": "q79"'  # cut short
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"^{path}:80: not valid JSON"):
        count_rows(path)
    lines[79] = json.dumps({"question": "q79"})  # valid JSON, not a row
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"^{path}:80: a row must be an object with 'inputs'"):
        count_rows(path)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_count_rows_checks_csv_and_parquet_cells(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    cells = [json.dumps({"question": f"q{n}"}) for n in range(5)] + ["{oops"]
    if suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as handle:
            csv.writer(handle).writerows([["inputs"], *[[cell] for cell in cells]])
    else:
        pa = pytest.importorskip("pyarrow")
        pq = pytest.importorskip("pyarrow.parquet")
        pq.write_table(pa.table({"inputs": cells}), path)
    with pytest.raises(DatasetError, match=rf"^{path}:row 6: column 'inputs'"):
        count_rows(path)


def test_count_rows_streams_the_whole_file(big_jsonl: Path) -> None:
    tracemalloc.start()
    try:
        assert count_rows(big_jsonl) == BIG_ROWS
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, f"counting allocated {peak} bytes at peak: the file was held whole"
