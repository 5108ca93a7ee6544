"""Data file loading and grouping (contract.dataset): one caption per row, rows sharing (image, query) = one sample."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import QUIC360_TSV, write_quic_csv

from contract import DataFileError, load_dataset, sample_id


@pytest.mark.skipif(not QUIC360_TSV.is_file(), reason=f"shared QuIC-360 test split absent: {QUIC360_TSV}")
def test_real_quic360_test_split_groups_into_1211_samples() -> None:
    dataset = load_dataset(QUIC360_TSV)
    assert dataset.num_rows == 6246
    assert len(dataset.samples) == 1211
    assert sum(len(sample.references) for sample in dataset.samples) == 6246 - dataset.empty_annotations_dropped
    assert len({sample.query for sample in dataset.samples}) == 33
    assert sum(len(sample.references) >= 2 for sample in dataset.samples) == 1169
    first = dataset.samples[0]
    assert first.image.startswith("https://") and first.image_path == first.image
    assert first.sample_id == sample_id(first.image, first.query)
    assert first.references[0].startswith("A construction business that was operating in a dessert area")


def test_rows_group_into_samples_with_references_in_file_order(tmp_path: Path) -> None:
    rows = [
        ("a.jpg", "location", "first"),
        ("b.jpg", "location", "other image"),
        ("a.jpg", "people", "other query"),
        ("a.jpg", "location", "second"),
        ("a.jpg", "location", "third"),
    ]
    dataset = load_dataset(write_quic_csv(tmp_path / "data.csv", rows))
    assert [(s.image, s.query, s.references) for s in dataset.samples] == [
        ("a.jpg", "location", ["first", "second", "third"]),
        ("b.jpg", "location", ["other image"]),
        ("a.jpg", "people", ["other query"]),
    ]
    assert dataset.samples[0].image_path == str((tmp_path / "a.jpg").resolve())
    # The id depends on the image as written and the query only: the same on any machine or folder.
    moved = load_dataset(write_quic_csv(tmp_path / "elsewhere" / "data.csv", rows))
    assert [s.sample_id for s in moved.samples] == [s.sample_id for s in dataset.samples]


def test_empty_annotations_and_reference_less_samples_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [
        ("a.jpg", "location", "kept"),
        ("a.jpg", "location", "   "),
        ("b.jpg", "location", ""),
        ("c.jpg", "weather", "sunny"),
    ]
    dataset = load_dataset(write_quic_csv(tmp_path / "data.csv", rows))
    assert [s.references for s in dataset.samples] == [["kept"], ["sunny"]]
    assert dataset.empty_annotations_dropped == 2
    assert dataset.samples_without_reference_dropped == 1
    assert "2 empty annotations dropped, 1 samples without any reference dropped" in dataset.summary_line()


def test_missing_column_names_the_columns_found(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("image,query,caption\na.jpg,location,x\n", encoding="utf-8")
    with pytest.raises(DataFileError) as error:
        load_dataset(path)
    message = str(error.value)
    assert str(path) in message and "'url'" in message and "'annotation'" in message
    assert "['image', 'query', 'caption']" in message


def test_configurable_column_names(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("image,question,caption\na.jpg,location,x\na.jpg,location,y\n", encoding="utf-8")
    dataset = load_dataset(path, image_column="image", query_column="question", annotation_column="caption")
    assert [s.references for s in dataset.samples] == [["x", "y"]]


def test_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"url,query,annotation\na.jpg,location,fine\na.jpg,location,caf\xe9 latin-1\n")
    with pytest.raises(DataFileError, match=r"line 3 is not valid UTF-8") as error:
        load_dataset(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("data.tsv", "url\tquery\tannotation\na.jpg\tlocation\tA beach, sunny\n"),
        ("data.csv", 'url,query,annotation\na.jpg,location,"A beach, sunny"\n'),
        # No telling extension: the delimiter is sniffed from the header.
        ("data.txt", "url\tquery\tannotation\na.jpg\tlocation\tA beach, sunny\n"),
        ("data", 'url,query,annotation\na.jpg,location,"A beach, sunny"\n'),
    ],
)
def test_tsv_and_csv_by_extension_or_sniffing(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    dataset = load_dataset(path)
    assert [(s.image, s.query, s.references) for s in dataset.samples] == [("a.jpg", "location", ["A beach, sunny"])]


def test_quoted_fields_keep_commas_quotes_and_newlines(tmp_path: Path) -> None:
    rows = [
        ("a.jpg", "location", 'He said "hello", then left'),
        ("a.jpg", "location", "two\nlines"),
    ]
    dataset = load_dataset(write_quic_csv(tmp_path / "data.csv", rows))
    assert dataset.num_rows == 2
    assert dataset.samples[0].references == ['He said "hello", then left', "two\nlines"]


def test_utf8_bom_and_urls(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes("\ufeffurl,query,annotation\nhttps://x.org/p.jpg,people,Ünïcode ok\n".encode())
    dataset = load_dataset(path)
    assert dataset.samples[0].image_path == "https://x.org/p.jpg"
    assert dataset.samples[0].references == ["Ünïcode ok"]


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="data file not found"):
        load_dataset(tmp_path / "absent.csv")


# --- defects found by the fault campaign ----------------------------------------------------------------------


def test_unquoted_comma_in_a_caption_is_refused_with_its_line(tmp_path: Path) -> None:
    """`...,Sunny,extra field` used to keep `Sunny` and drop the rest of the caption silently."""
    data = tmp_path / "data.csv"
    data.write_text(
        "url,query,annotation\na.jpg,weather,It is sunny.\na.jpg,weather,Sunny,with a few clouds\n",
        encoding="utf-8",
    )
    with pytest.raises(DataFileError, match=r"data.csv: line 3 has 4 fields but the header has 3 .*must be quoted"):
        load_dataset(data)


def test_a_short_row_is_refused_with_its_line(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("url,query,annotation\na.jpg,weather,It is sunny.\na.jpg,weather\n", encoding="utf-8")
    with pytest.raises(DataFileError, match=r"line 3 has 2 fields but the header has 3"):
        load_dataset(data)


def test_errors_name_the_file_line_after_a_multi_line_caption(tmp_path: Path) -> None:
    """Record 3 starts on file line 5 when record 2's quoted caption spans lines 3-4."""
    data = tmp_path / "data.csv"
    data.write_text(
        'url,query,annotation\na.jpg,weather,ok\na.jpg,people,"two\nlines"\n,people,no image here\n', encoding="utf-8"
    )
    with pytest.raises(DataFileError, match=r"row at line 5 has an empty 'url'"):
        load_dataset(data)


def test_identical_duplicate_rows_warn_once_with_a_count(tmp_path: Path) -> None:
    rows = [("a.jpg", "weather", "sunny"), ("a.jpg", "weather", "sunny"), ("a.jpg", "weather", "sunny")]
    rows += [("a.jpg", "weather", "cloudy"), ("b.jpg", "weather", "sunny")]
    dataset = load_dataset(write_quic_csv(tmp_path / "data.csv", rows))
    assert dataset.samples[0].references == ["sunny", "sunny", "sunny", "cloudy"]  # kept, as the tools score them
    assert len(dataset.warnings) == 1
    assert "2 row(s) repeat an earlier (url, query, annotation) row exactly (first at line 3)" in dataset.warnings[0]
