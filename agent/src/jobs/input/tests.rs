use std::io::Write;

use edgeship_domain::{Dim, ElementType, InputFormat, TensorSpec};
use edgeship_runtime::TensorData;

use testkit::jobs::npy;

use super::*;

fn spec(name: &str, element_type: ElementType, shape: Vec<Dim>) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        element_type,
        shape,
    }
}

fn features() -> Vec<TensorSpec> {
    vec![spec(
        "x",
        ElementType::F32,
        vec![Dim::Symbol("N".into()), Dim::Fixed(3)],
    )]
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.path().join(name);
    let mut file = File::create(&path).expect("create");
    file.write_all(bytes).expect("write");
    path
}

#[test]
fn json_lines_give_one_record_per_line_and_each_bad_line_its_own_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "[1, 2, 3]\n\n{\"x\": [4, 5, 6]}\nnot json\n[1, 2]\n[7, 8, 9]";
    let path = write(&dir, "in.jsonl", text.as_bytes());
    let mut source = Source::open(
        &path,
        InputFormat::JsonLines,
        &features(),
        Position::default(),
    )
    .expect("opens");
    assert_eq!(source.total(), 5, "blank lines are not records");
    let records = source.next_records(10).expect("reads");
    let indexes: Vec<u64> = records.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, [0, 1, 2, 3, 4]);
    let first = records[0].1.as_ref().expect("valid");
    assert_eq!(first[0].shape, [1, 3]);
    assert_eq!(first[0].data, TensorData::F32(vec![1.0, 2.0, 3.0]));
    assert!(records[1].1.is_ok(), "an object keyed by the input's name");
    let not_json = records[2].1.as_ref().expect_err("not JSON");
    assert!(not_json.contains("not JSON"), "{not_json}");
    let short = records[3].1.as_ref().expect_err("too short");
    assert!(short.contains("dimension 0 must be 3, got 2"), "{short}");
    assert!(source.next_records(10).expect("reads").is_empty());
}

#[test]
fn a_source_resumes_at_a_position_it_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines: String = (0..10).map(|i| format!("[{i}, {i}, {i}]\n")).collect();
    let path = write(&dir, "in.jsonl", lines.as_bytes());
    let mut source = Source::open(
        &path,
        InputFormat::JsonLines,
        &features(),
        Position::default(),
    )
    .expect("opens");
    source.next_records(4).expect("reads");
    let saved = source.position();
    assert_eq!(saved.record, 4);
    let mut resumed =
        Source::open(&path, InputFormat::JsonLines, &features(), saved).expect("opens");
    let records = resumed.next_records(100).expect("reads");
    assert_eq!(records.len(), 6);
    assert_eq!(records[0].0, 4);
    let values = records[0].1.as_ref().expect("valid");
    assert_eq!(values[0].data, TensorData::F32(vec![4.0; 3]));
}

#[test]
fn npy_rows_are_records_cast_to_the_model_type_and_resumable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let values: Vec<f64> = (0..12).map(f64::from).collect();
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = write(&dir, "in.npy", &npy("<f8", "(4, 3)", &data));
    let mut source =
        Source::open(&path, InputFormat::Npy, &features(), Position::default()).expect("opens");
    assert_eq!(source.total(), 4);
    let records = source.next_records(2).expect("reads");
    let second = records[1].1.as_ref().expect("valid");
    assert_eq!(second[0].shape, [1, 3]);
    assert_eq!(second[0].data, TensorData::F32(vec![3.0, 4.0, 5.0]));
    let mut resumed =
        Source::open(&path, InputFormat::Npy, &features(), source.position()).expect("opens");
    let rest = resumed.next_records(10).expect("reads");
    assert_eq!(rest.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [2, 3]);
}

#[test]
fn broken_npy_files_fail_with_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |bytes: &[u8]| {
        let path = write(&dir, "bad.npy", bytes);
        Source::open(&path, InputFormat::Npy, &features(), Position::default())
            .expect_err("refused")
    };
    assert!(open(b"PK\x03\x04 a zip").contains("magic"));
    let rows = open(&npy("<f4", "(2, 4)", &[0; 32]));
    assert!(rows.contains("dimension 0 must be 3, got 4"), "{rows}");
    let truncated = open(&npy("<f4", "(100, 3)", &[0; 24]));
    assert!(truncated.contains("truncated"), "{truncated}");
    let big_endian = open(&npy(">f4", "(1, 3)", &[0; 12]));
    assert!(big_endian.contains("big-endian"), "{big_endian}");
    let strings = open(&npy("<U5", "(1, 3)", &[0; 60]));
    assert!(strings.contains("not supported"), "{strings}");
}

#[test]
fn inputs_without_a_batch_axis_are_refused_up_front() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "in.jsonl", b"[1, 2, 3]\n");
    let fixed = vec![spec(
        "x",
        ElementType::F32,
        vec![Dim::Fixed(8), Dim::Fixed(3)],
    )];
    let err = Source::open(&path, InputFormat::JsonLines, &fixed, Position::default())
        .expect_err("refused");
    assert!(err.contains("fixed first axis of 8"), "{err}");
}
