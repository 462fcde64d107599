//! Inputs for batch-job tests and benchmarks: diabetes records (the fixture's rows, scaled so
//! that records differ) and `.npy` files written as NumPy writes them.

use serde_json::Value;

/// Features of one diabetes record.
pub const DIABETES_FEATURES: usize = 10;

/// Record `i` of a diabetes input: a fixture row, scaled by 1 to 3.
pub fn diabetes_record(i: usize) -> Vec<f32> {
    let rows = crate::expected("diabetes")["inputs"].clone();
    let rows = rows.as_array().expect("the fixture's rows");
    record_of(rows, i)
}

/// Like [`diabetes_record`], over rows read once (for many records).
pub fn record_of(rows: &[Value], i: usize) -> Vec<f32> {
    let scale = 1.0 + (i % 101) as f64 / 50.0;
    rows[i % rows.len()]
        .as_array()
        .expect("a row")
        .iter()
        .map(|v| (v.as_f64().expect("a number") * scale) as f32)
        .collect()
}

/// `count` diabetes records as a float32 `.npy` file, shape `(count, 10)`.
pub fn diabetes_npy(count: usize) -> Vec<u8> {
    let rows = crate::expected("diabetes")["inputs"].clone();
    let rows = rows.as_array().expect("the fixture's rows");
    let data: Vec<u8> = (0..count)
        .flat_map(|i| record_of(rows, i))
        .flat_map(f32::to_le_bytes)
        .collect();
    npy("<f4", &format!("({count}, {DIABETES_FEATURES})"), &data)
}

/// An `.npy` file (format 1.0) of type `descr` and shape `shape` (a Python tuple) holding
/// `data`, its header padded so the data starts on a 64-byte boundary, as NumPy writes it.
pub fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// The hub's record of job `name` (gRPC `GetJob`).
pub async fn job(hub: &str, name: &str) -> edgeship_proto::v1::Job {
    use edgeship_proto::v1 as pb;
    let mut client = pb::jobs_client::JobsClient::connect(hub.to_owned())
        .await
        .expect("connect to the hub");
    client
        .get_job(pb::GetJobRequest { name: name.into() })
        .await
        .expect("get job")
        .into_inner()
}
