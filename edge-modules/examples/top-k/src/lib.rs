//! Post-processing: runs the model on the request as `/score` takes it (`{"data": [[…], …]}`)
//! and answers the `k` most probable classes of each row with their names, from the label
//! file built into the module (`labels.txt`, one name per line, in class order). `?k=N`
//! picks k (default 3).

use edgeship_module::{EntryModule, Error, Request, Response, Tensor, infer, models};
use serde::{Deserialize, Serialize};

/// The class names, in class-index order.
const LABELS: &str = include_str!("../labels.txt");
const DEFAULT_K: usize = 3;

#[derive(Debug)]
struct TopK {
    labels: Vec<&'static str>,
    /// Which output holds the probabilities.
    probabilities: usize,
}

#[derive(Deserialize)]
struct Body {
    data: Vec<Vec<f32>>,
}

#[derive(Serialize)]
struct Ranked {
    index: usize,
    label: &'static str,
    probability: f32,
}

impl EntryModule for TopK {
    fn init() -> Result<Self, String> {
        let labels: Vec<&'static str> = LABELS.lines().map(str::trim).collect();
        let models = models();
        let model = models.first().ok_or("the deployment serves no model")?;
        let probabilities = model
            .outputs
            .iter()
            .position(|o| o.shape.last() == Some(&(labels.len() as i64)))
            .ok_or_else(|| {
                format!(
                    "{} has no output of {} classes, one per label in labels.txt",
                    model.name,
                    labels.len()
                )
            })?;
        Ok(TopK {
            labels,
            probabilities,
        })
    }

    fn run(&mut self, request: &Request) -> Result<Response, Error> {
        let k = match request.query_param("k") {
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|&k| k >= 1)
                .ok_or_else(|| {
                    Error::bad_request(format!("k must be a whole number from 1, not {text:?}"))
                })?,
            None => DEFAULT_K,
        }
        .min(self.labels.len());
        let body: Body = request.json()?;
        let width = body.data.first().map_or(0, Vec::len);
        if body.data.iter().any(|row| row.len() != width) {
            return Err(Error::bad_request(
                "every row of data must have the same length",
            ));
        }
        let flat: Vec<f32> = body.data.iter().flatten().copied().collect();
        let input = Tensor::from_f32("data", &[body.data.len() as u64, width as u64], &flat);
        let outputs = infer("", &[input])?;
        let scores = outputs
            .get(self.probabilities)
            .ok_or_else(|| Error::internal("the model answered fewer outputs than it declares"))?
            .to_f32()?;
        let classes = self.labels.len();
        let ranked: Vec<Vec<Ranked>> = scores
            .chunks(classes)
            .map(|row| {
                let mut order: Vec<usize> = (0..classes).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                order
                    .into_iter()
                    .take(k)
                    .map(|index| Ranked {
                        index,
                        label: self.labels[index],
                        probability: row[index],
                    })
                    .collect()
            })
            .collect();
        Ok(Response::json(&ranked))
    }
}

edgeship_module::entry_module!(TopK);
