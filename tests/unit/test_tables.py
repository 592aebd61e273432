"""``bulkinfer prepare``'s parts: table sources, templates, image checks, records per dialect, the report."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bulkinfer.dialects.registry import get_dialect
from bulkinfer.domain.request import ChatRequest, ImagePart, TextPart
from bulkinfer.errors import UserError
from bulkinfer.formats.bedrock import RECORD_ID_ALPHABET, RECORD_ID_LENGTH
from bulkinfer.storage.uris import LocalBuckets
from bulkinfer.tables.builder import DIALECTS, DialectName, RecordBuilder, RecordSpec, image_names
from bulkinfer.tables.images import MAX_IMAGE_SIDE, BucketImages, FolderImages, ImageProblem, check_image
from bulkinfer.tables.preparation import check_spec, prepare_table
from bulkinfer.tables.report import Problem, ProblemLog, Summary
from bulkinfer.tables.source import Row, Table
from bulkinfer.tables.template import PromptTemplate, TemplateProblem

PROMPT = PromptTemplate("Describe {{ name }} ({{ category }}).", "prompt.j2")


def png(color: str = "red", size: tuple[int, int] = (8, 6), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / "red.png").write_bytes(png("red"))
    (folder / "blue.jpg").write_bytes(png("blue", fmt="JPEG"))
    (folder / "sub" / "green.webp").write_bytes(png("green", fmt="WEBP"))
    whole = png("white", (64, 64))
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "old.bmp").write_bytes(png("black", fmt="BMP"))
    (folder / "notes.png").write_text("not an image at all")
    return folder


def write_csv(path: Path, text: str) -> Table:
    path.write_text(text, encoding="utf-8")
    return Table(path)


def build_all(table: Table, spec: RecordSpec) -> tuple[list[dict[str, Any]], list[Problem]]:
    builder = RecordBuilder(spec, table.name)
    records: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for row in table.rows():
        built = builder.build(row)
        if isinstance(built, list):
            problems.extend(built)
        else:
            records.append(built)
    return records, problems


def to_request(dialect: str, body: dict[str, Any]) -> ChatRequest:
    request = get_dialect(dialect).to_request(body)
    assert isinstance(request, ChatRequest)
    return request


# -- sources ---------------------------------------------------------------------------------------------


def test_csv_rows_carry_their_start_line_across_quoted_newlines_and_blank_lines(tmp_path: Path) -> None:
    table = write_csv(
        tmp_path / "t.csv",
        '\ufeffid,name,category\nA1,Mug,"Kitchen\nand dining"\n\nA2,Pan,Cookware\nA3,Lid\nA4,x,y,extra\n',
    )
    assert table.columns == ["id", "name", "category"]  # the byte-order mark is not part of "id"
    rows = list(table.rows())
    assert [(r.number, r.line, r.where) for r in rows] == [
        (1, 2, "line 2"),
        (2, 5, "line 5"),
        (3, 6, "line 6"),
        (4, 7, "line 7"),
    ]
    assert rows[0].values == {"id": "A1", "name": "Mug", "category": "Kitchen\nand dining"}
    assert rows[2].values == {"id": "A3", "name": "Lid"}  # a short row leaves its last columns out
    assert rows[3].error == "4 fields, but the header names 3 columns"


def test_csv_with_a_repeated_column_or_no_header_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="column 'a' appears more than once"):
        write_csv(tmp_path / "dup.csv", "a,b,a\n1,2,3\n")
    with pytest.raises(UserError, match="no header row"):
        write_csv(tmp_path / "empty.csv", "")
    with pytest.raises(UserError, match="not a table"):
        write_csv(tmp_path / "t.xlsx", "")
    (tmp_path / "latin1.csv").write_bytes("caf\xe9,b\n".encode("latin-1"))
    with pytest.raises(UserError, match="header row cannot be read"):
        Table(tmp_path / "latin1.csv")
    with pytest.raises(UserError, match="table not found"):
        Table(tmp_path / "nothing.csv")


def test_parquet_rows_stream_in_batches_with_their_types(tmp_path: Path, images: Path) -> None:
    path = tmp_path / "products.parquet"
    data = {
        "sku": list(range(1, 601)),
        "name": [f"item {i}" for i in range(1, 601)],
        "category": [None if i % 2 else "tools" for i in range(1, 601)],
        "pictures": [["red.png", "blue.jpg"] for _ in range(600)],
    }
    pq.write_table(pa.table(data), path, row_group_size=200)
    table = Table(path)
    assert table.columns == ["sku", "name", "category", "pictures"]
    rows = list(table.rows())
    assert len(rows) == 600 and rows[599].number == 600 and rows[599].line is None
    assert rows[0].where == "row 1"
    assert rows[1].values == {
        "sku": 2,
        "name": "item 2",
        "category": "tools",
        "pictures": ["red.png", "blue.jpg"],
    }
    spec = RecordSpec(PROMPT, id_column="sku", image_column="pictures", images=FolderImages(images, tmp_path))
    records, problems = build_all(table, spec)
    assert problems == []
    assert records[0]["recordId"] == "1"
    first = to_request("anthropic", records[0]["modelInput"])
    assert first.messages[0].text == "Describe item 1 ()."  # a null cell renders as nothing
    assert [p.media_type for p in first.messages[0].parts if isinstance(p, ImagePart)] == [
        "image/png",
        "image/jpeg",
    ]


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UserError, match=re.escape('pip install "bulkinfer[parquet]"')):
        Table(path)


def test_a_file_that_is_not_parquet_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "t.parquet").write_text("id,name\n")
    with pytest.raises(UserError, match="not a readable Parquet file"):
        Table(tmp_path / "t.parquet")


def test_jsonl_rows_and_unreadable_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"name": "Mug", "category": "Kitchen"}\n'  # a byte-order mark first
        b'\n[1, 2]\n{"name": \n{"name": "Pan", "category": "Cook"}\n'
    )
    table = Table(path)
    assert table.columns is None
    records, problems = build_all(table, RecordSpec(PROMPT))
    assert [r["recordId"] for r in records] == ["ROW00000001", "ROW00000004"]
    assert [(p.line, p.row, p.kind) for p in problems] == [(3, 2, "unreadable-row"), (4, 3, "unreadable-row")]
    assert problems[0].message == "expected a JSON object"
    assert problems[1].message.startswith("not valid JSON")


# -- templates -------------------------------------------------------------------------------------------


def test_a_template_naming_a_missing_column_reports_the_column_and_the_template_line(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "t.csv", "name,category\nMug,Kitchen\n")
    template = PromptTemplate("Product: {{ name }}\nBrand: {{ brand }}\n", "prompt.j2")
    records, problems = build_all(table, RecordSpec(template))
    assert records == []
    [problem] = problems
    assert (problem.where, problem.column, problem.kind) == ("t.csv line 2", "brand", "template")
    assert problem.message == "prompt.j2 line 2: column 'brand' is missing from the row"


def test_templates_are_strict_but_allow_is_defined_and_row_lookups() -> None:
    template = PromptTemplate(
        '{{ row["unit price"] }}{% if brand is defined %} by {{ brand }}{% endif %}', "p.j2"
    )
    assert template.render({"unit price": "4.99"}) == "4.99"
    assert template.render({"unit price": "4.99", "brand": "Acme"}) == "4.99 by Acme"
    with pytest.raises(TemplateProblem) as caught:
        template.render({"brand": "Acme"})
    assert caught.value.column == "unit price"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ name.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
    ],
)
def test_the_sandbox_refuses_attribute_tricks(source: str) -> None:
    with pytest.raises(TemplateProblem, match="refused by the sandbox"):
        PromptTemplate(source, "evil.j2").render({"name": "x"})


def test_a_template_that_does_not_parse_is_a_usage_error_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.j2"
    path.write_text("line one\n{{ name \n")
    with pytest.raises(UserError, match=r"bad\.j2 line 2"):
        PromptTemplate.load(path)


def test_a_template_rendering_nothing_leaves_the_row_out(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "t.csv", "name\n \n")
    _, problems = build_all(table, RecordSpec(PromptTemplate("{{ name }}", "p.j2")))
    assert [p.kind for p in problems] == ["template"]
    assert "renders to empty text" in problems[0].message


# -- records in each dialect -------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_each_dialect_inlines_images_the_engine_reads_back(
    tmp_path: Path, images: Path, dialect: DialectName
) -> None:
    table = write_csv(tmp_path / "t.csv", 'name,category,pics\nMug,Kitchen,"red.png; sub/green.webp"\n')
    system = PromptTemplate("You sell {{ category }}.", "--system")
    spec = RecordSpec(PROMPT, dialect, 77, system, image_column="pics", images=FolderImages(images, tmp_path))
    [record], problems = build_all(table, spec)
    assert problems == []
    request = to_request(dialect, record["modelInput"])
    assert get_dialect(dialect).name == dialect
    assert request.system == "You sell Kitchen."
    assert request.params.max_tokens == 77
    parts = request.messages[-1].parts
    assert isinstance(parts[-1], TextPart) and parts[-1].text == "Describe Mug (Kitchen)."
    pictures = [p for p in parts if isinstance(p, ImagePart)]
    assert [(p.media_type, p.data) for p in pictures] == [
        ("image/png", (images / "red.png").read_bytes()),
        ("image/webp", (images / "sub" / "green.webp").read_bytes()),
    ]


def test_the_exact_shapes_of_inlined_images(tmp_path: Path, images: Path) -> None:
    table = write_csv(tmp_path / "t.csv", "name,category,pic\nMug,Kitchen,red.png\n")
    store = FolderImages(images, tmp_path)
    bodies = {}
    for dialect in DIALECTS:
        spec = RecordSpec(PROMPT, dialect, 10, image_column="pic", images=store)
        bodies[dialect] = build_all(table, spec)[0][0]["modelInput"]
    data = bodies["anthropic"]["messages"][0]["content"][0]["source"]["data"]
    assert bodies["anthropic"] == {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 10,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
                    {"type": "text", "text": "Describe Mug (Kitchen)."},
                ],
            }
        ],
    }
    assert bodies["converse"] == {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"image": {"format": "png", "source": {"bytes": data}}},
                    {"text": "Describe Mug (Kitchen)."},
                ],
            }
        ],
        "inferenceConfig": {"maxTokens": 10},
    }
    assert bodies["openai-chat"] == {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                    {"type": "text", "text": "Describe Mug (Kitchen)."},
                ],
            }
        ],
        "max_tokens": 10,
    }


@pytest.mark.parametrize("dialect", ["anthropic", "openai-chat"])
def test_referenced_local_images_are_relative_to_the_output_folder(
    tmp_path: Path, images: Path, dialect: DialectName
) -> None:
    table = write_csv(tmp_path / "t.csv", "name,category,pic\nMug,Kitchen,sub/green.webp\n")
    out_dir = tmp_path / "out"
    relative = RecordSpec(
        PROMPT, dialect, image_column="pic", images=FolderImages(images, out_dir), inline=False
    )
    absolute = RecordSpec(
        PROMPT, dialect, image_column="pic", images=FolderImages(images, out_dir, absolute=True), inline=False
    )
    urls = []
    for spec in (relative, absolute):
        request = to_request(dialect, build_all(table, spec)[0][0]["modelInput"])
        [picture] = [p for p in request.messages[0].parts if isinstance(p, ImagePart)]
        assert picture.data is None
        urls.append(picture.url)
    assert urls == ["../images/sub/green.webp", (images / "sub" / "green.webp").resolve().as_uri()]


def test_referenced_images_in_a_local_bucket_are_s3_uris_converse_accepts(tmp_path: Path) -> None:
    bucket = tmp_path / "data" / "s3" / "catalog" / "shots"
    bucket.mkdir(parents=True)
    (bucket / "red.png").write_bytes(png())
    store = BucketImages("s3://catalog/shots/", buckets=LocalBuckets(tmp_path / "data"))
    table = write_csv(tmp_path / "t.csv", "name,category,pic\nMug,Kitchen,red.png\nPan,Cook,gone.png\n")
    spec = RecordSpec(PROMPT, "converse", image_column="pic", images=store, inline=False)
    check_spec(table, spec, tmp_path / "records.jsonl")
    [record], [problem] = build_all(table, spec)
    assert record["modelInput"]["messages"][0]["content"][0] == {
        "image": {"format": "png", "source": {"s3Location": {"uri": "s3://catalog/shots/red.png"}}}
    }
    to_request("converse", record["modelInput"])
    assert (problem.kind, problem.message) == (
        "image-missing",
        "gone.png: no such object: s3://catalog/shots/gone.png",
    )
    inline = RecordSpec(PROMPT, "converse", image_column="pic", images=store)
    [record], _ = build_all(table, inline)
    assert to_request("converse", record["modelInput"]).messages[0].parts[0] == ImagePart(
        "image/png", png(), field="modelInput.messages.0.content.0.image.source"
    )
    with pytest.raises(UserError, match="bucket 'nobucket' does not exist"):
        BucketImages("s3://nobucket/x/", buckets=LocalBuckets(tmp_path / "data"))


def test_converse_cannot_reference_a_local_folder(tmp_path: Path, images: Path) -> None:
    table = write_csv(tmp_path / "t.csv", "name,category,pic\nMug,Kitchen,red.png\n")
    spec = RecordSpec(
        PROMPT, "converse", image_column="pic", images=FolderImages(images, tmp_path), inline=False
    )
    with pytest.raises(UserError, match="s3Location"):
        check_spec(table, spec, tmp_path / "records.jsonl")


def test_a_row_without_image_names_is_a_text_only_record(tmp_path: Path, images: Path) -> None:
    table = write_csv(tmp_path / "t.csv", "name,category,pic\nMug,Kitchen,\n")
    spec = RecordSpec(PROMPT, image_column="pic", images=FolderImages(images, tmp_path))
    [record], _ = build_all(table, spec)
    assert record["modelInput"]["messages"][0]["content"] == [
        {"type": "text", "text": "Describe Mug (Kitchen)."}
    ]


def test_image_names_in_a_cell() -> None:
    assert image_names("a.png") == ["a.png"]
    assert image_names(" a.png ; b.png ;") == ["a.png", "b.png"]
    assert image_names('["a.png", "b;c.png"]') == ["a.png", "b;c.png"]
    assert image_names(["a.png"]) == ["a.png"]
    assert image_names(None) == [] and image_names("") == []
    with pytest.raises(ValueError, match="JSON list"):
        image_names('["a.png"')
    with pytest.raises(ValueError, match="only text"):
        image_names([1, 2])


# -- record ids ------------------------------------------------------------------------------------------


def test_generated_ids_are_stable_row_numbers_in_bedrocks_shape(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "t.csv", "name,category\nA,x\nB,y\nC,z\n")
    records, _ = build_all(table, RecordSpec(PROMPT))
    ids = [r["recordId"] for r in records]
    assert ids == ["ROW00000001", "ROW00000002", "ROW00000003"]
    assert all(len(i) == RECORD_ID_LENGTH and set(i) <= set(RECORD_ID_ALPHABET) for i in ids)


def test_ids_from_a_column_and_duplicate_missing_or_overlong_ones(tmp_path: Path) -> None:
    long_id = "X" * 257
    table = write_csv(
        tmp_path / "t.csv", f"sku,name,category\nA1,Mug,x\n A2 ,Pan,y\nA1,Lid,z\n,Cup,w\n{long_id},Pot,v\n"
    )
    records, problems = build_all(table, RecordSpec(PROMPT, id_column="sku"))
    assert [r["recordId"] for r in records] == ["A1", "A2"]
    assert [(p.line, p.kind, p.column) for p in problems] == [
        (4, "duplicate-id", "sku"),
        (5, "id-missing", "sku"),
        (6, "id-invalid", "sku"),
    ]
    assert problems[0].message == "recordId 'A1' is already used on line 2"


def test_duplicate_ids_in_parquet_name_the_first_row(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table({"sku": ["a", "b", "a"], "name": ["x", "y", "z"], "category": ["", "", ""]}), path
    )
    _, [problem] = build_all(Table(path), RecordSpec(PROMPT, id_column="sku"))
    assert (problem.where, problem.message) == ("t.parquet row 3", "recordId 'a' is already used on row 1")


def test_options_naming_a_column_the_header_lacks_are_usage_errors(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "t.csv", "name,category\nMug,x\n")
    with pytest.raises(
        UserError, match=r"--id-column 'sku': t\.csv has no such column \(it has: name, category\)"
    ):
        check_spec(table, RecordSpec(PROMPT, id_column="sku"), tmp_path / "o.jsonl")
    with pytest.raises(UserError, match="name the output"):
        check_spec(table, RecordSpec(PROMPT), tmp_path / "o.json")


# -- image problems --------------------------------------------------------------------------------------


def test_missing_corrupt_and_wrongly_formatted_images_are_reported(tmp_path: Path, images: Path) -> None:
    names = ["red.png", "gone.png", "truncated.png", "old.bmp", "notes.png", "../red.png", "sub"]
    text = "name,category,pic\n" + "".join(f"P{i},x,{n}\n" for i, n in enumerate(names))
    table = write_csv(tmp_path / "t.csv", text)
    records, problems = build_all(
        table, RecordSpec(PROMPT, image_column="pic", images=FolderImages(images, tmp_path))
    )
    assert len(records) == 1
    assert [(p.line, p.kind, p.column) for p in problems] == [
        (3, "image-missing", "pic"),
        (4, "image-unreadable", "pic"),
        (5, "image-format", "pic"),
        (6, "image-format", "pic"),
        (7, "image-name", "pic"),
        (8, "image-missing", "pic"),
    ]
    assert problems[0].message.startswith("gone.png: no such file in ")
    assert "truncated" in problems[1].message
    assert problems[2].message == "old.bmp: BMP images are not accepted (png, jpeg, gif, webp)"


def test_referenced_images_are_checked_for_existence_and_extension(tmp_path: Path, images: Path) -> None:
    table = write_csv(tmp_path / "t.csv", "name,category,pic\nA,x,gone.png\nB,x,old.bmp\nC,x,truncated.png\n")
    spec = RecordSpec(PROMPT, image_column="pic", images=FolderImages(images, tmp_path), inline=False)
    records, problems = build_all(table, spec)
    assert len(records) == 1  # a referenced image is not decoded: the engine checks it when the job runs
    assert [p.kind for p in problems] == ["image-missing", "image-format"]


def test_images_over_bedrocks_limits_are_refused() -> None:
    with pytest.raises(ImageProblem, match="over 8000 a side"):
        check_image(png(size=(MAX_IMAGE_SIDE + 1, 1)))
    assert check_image(png(fmt="GIF")) == "gif"


def test_every_problem_of_a_row_is_reported_together(tmp_path: Path, images: Path) -> None:
    table = write_csv(tmp_path / "t.csv", "sku,category,pic\n,x,gone.png;old.bmp\n")
    spec = RecordSpec(PROMPT, id_column="sku", image_column="pic", images=FolderImages(images, tmp_path))
    _, problems = build_all(table, spec)
    assert [p.kind for p in problems] == ["id-missing", "template", "image-missing", "image-format"]


# -- the whole pass and its report ---------------------------------------------------------------------------


def test_prepare_writes_good_rows_and_reports_the_rest(tmp_path: Path, images: Path) -> None:
    table = write_csv(
        tmp_path / "t.csv", "id,name,category,pic\nA,Mug,x,red.png\nB,Pan,y,gone.png\nC,Lid,z,blue.jpg\n"
    )
    spec = RecordSpec(PROMPT, id_column="id", image_column="pic", images=FolderImages(images, tmp_path))
    output = tmp_path / "out" / "records.jsonl"
    with ProblemLog(keep=0) as log:
        summary = prepare_table(table, spec, output, log)
        report = orjson.loads(b"".join(log.report(summary)))
    assert (summary.rows, summary.written, summary.skipped) == (3, 2, 1)
    assert [orjson.loads(line)["recordId"] for line in output.read_bytes().splitlines()] == ["A", "C"]
    assert report["rowCount"] == 3 and report["skippedCount"] == 1
    assert report["problemCounts"] == {"image-missing": 1}
    [problem] = report["problems"]
    assert {k: problem[k] for k in ("table", "row", "line", "column", "kind")} == {
        "table": "t.csv",
        "row": 2,
        "line": 3,
        "column": "pic",
        "kind": "image-missing",
    }


def test_the_problem_log_keeps_a_few_and_streams_all(tmp_path: Path) -> None:
    with ProblemLog(keep=3) as log:
        for i in range(1000):
            log.add([Problem("t.csv", i + 1, i + 2, "template", f"problem {i}", "name")])
        assert len(log.first) == 3 and log.total == 1000
        report = orjson.loads(b"".join(log.report(Summary("t.csv", "o.jsonl", 1000, 0))))
    assert len(report["problems"]) == 1000
    assert report["problems"][999]["message"] == "problem 999"


def test_rows_know_where_they_are() -> None:
    assert Row(3, None, {}).where == "row 3"
    assert Row(3, 9, {}).where == "line 9"
