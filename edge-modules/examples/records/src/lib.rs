//! Records → tensor: turns the pandas-style record list Azure ML's Power BI integration sends
//! (`{"data": [{"age": 0.03, "sex": 0.05, …}, …]}`) into the diabetes model's input rows, in
//! the model's column order, and answers with one prediction per record.

use edgeship_module::{ElementType, EntryModule, Error, Request, Response, Tensor, infer, models};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The diabetes data set's columns, in the order the model was trained on.
const COLUMNS: [&str; 10] = [
    "age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6",
];

#[derive(Debug)]
struct Records {
    /// What the model takes: f32 or f64.
    element_type: ElementType,
}

/// One record as the model's columns: parsed straight into numbers, the common case.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    age: f64,
    sex: f64,
    bmi: f64,
    bp: f64,
    s1: f64,
    s2: f64,
    s3: f64,
    s4: f64,
    s5: f64,
    s6: f64,
}

impl Record {
    fn values(&self) -> [f64; 10] {
        [
            self.age, self.sex, self.bmi, self.bp, self.s1, self.s2, self.s3, self.s4, self.s5,
            self.s6,
        ]
    }
}

#[derive(Deserialize)]
struct Body {
    data: Vec<Record>,
}

/// The same body read loosely, to say which record and column are wrong when the strict
/// reading fails.
#[derive(Deserialize)]
struct LooseBody {
    data: Vec<Map<String, Value>>,
}

impl EntryModule for Records {
    fn init() -> Result<Self, String> {
        let models = models();
        let model = models.first().ok_or("the deployment serves no model")?;
        let input = model.inputs.first().ok_or("the model takes no input")?;
        if input.shape.last() != Some(&(COLUMNS.len() as i64)) {
            return Err(format!(
                "{} takes rows of shape {:?}; this module makes rows of the {} diabetes columns",
                model.name,
                input.shape,
                COLUMNS.len()
            ));
        }
        match input.element_type {
            ElementType::F32 | ElementType::F64 => Ok(Records {
                element_type: input.element_type,
            }),
            other => Err(format!(
                "{} takes {other:?}; this module makes floats",
                model.name
            )),
        }
    }

    fn run(&mut self, request: &Request) -> Result<Response, Error> {
        let body: Body = match serde_json::from_slice(&request.body) {
            Ok(body) => body,
            Err(strict) => return Err(explain(&request.body, strict)),
        };
        let values: Vec<f64> = body.data.iter().flat_map(Record::values).collect();
        let shape = [body.data.len() as u64, COLUMNS.len() as u64];
        let input = match self.element_type {
            ElementType::F64 => Tensor::from_f64("data", &shape, &values),
            _ => {
                let narrow: Vec<f32> = values.iter().map(|&v| v as f32).collect();
                Tensor::from_f32("data", &shape, &narrow)
            }
        };
        let outputs = infer("", &[input])?;
        let predictions = outputs
            .first()
            .ok_or_else(|| Error::internal("the model answered with no output"))?
            .to_f64()?;
        Ok(Response::json(&predictions))
    }
}

/// Why a body that is not a list of records of the model's columns was refused: the first
/// record and column at fault, or what the JSON reader said.
fn explain(body: &[u8], strict: serde_json::Error) -> Error {
    let Ok(loose) = serde_json::from_slice::<LooseBody>(body) else {
        return Error::bad_request(format!("the body is not the JSON expected: {strict}"));
    };
    for (i, record) in loose.data.iter().enumerate() {
        if let Some(unknown) = record.keys().find(|k| !COLUMNS.contains(&k.as_str())) {
            return Error::bad_request(format!(
                "record {i} has a column {unknown:?} the model does not take; its columns are {}",
                COLUMNS.join(", ")
            ));
        }
        if let Some(column) = COLUMNS
            .iter()
            .find(|c| record.get(**c).and_then(Value::as_f64).is_none())
        {
            return Error::bad_request(format!("record {i} has no number for {column:?}"));
        }
    }
    Error::bad_request(format!("the body is not the JSON expected: {strict}"))
}

edgeship_module::entry_module!(Records);
