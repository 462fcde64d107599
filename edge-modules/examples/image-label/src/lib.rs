//! Image → label: takes a PNG (`application/octet-stream` or `image/png`), makes it the 8×8
//! grayscale picture the digits model was trained on (dark ink on light paper, each pixel the
//! average of the block it covers, scaled to 0..1 with ink high), and answers
//! `{"label": 3, "probabilities": […]}`.

use edgeship_module::{EntryModule, Error, Request, Response, Tensor, infer};
use serde::Serialize;

/// The digits model's picture: 8×8.
const SIDE: usize = 8;
/// Largest picture accepted, in pixels: a bigger one is refused before it is decoded.
const MAX_PIXELS: u64 = 4096 * 4096;

#[derive(Debug)]
struct ImageLabel;

#[derive(Serialize)]
struct Answer {
    label: i64,
    probabilities: Vec<f32>,
}

impl EntryModule for ImageLabel {
    fn init() -> Result<Self, String> {
        Ok(ImageLabel)
    }

    fn run(&mut self, request: &Request) -> Result<Response, Error> {
        let pixels = decode(&request.body).map_err(Error::bad_request)?;
        let input = Tensor::from_f32("pixels", &[1, (SIDE * SIDE) as u64], &pixels);
        let outputs = infer("", &[input])?;
        let (label, probabilities) = match outputs.as_slice() {
            [label, probabilities, ..] => (label.to_i64()?, probabilities.to_f32()?),
            _ => {
                return Err(Error::internal(
                    "the model did not answer a label and probabilities",
                ));
            }
        };
        let label = *label
            .first()
            .ok_or_else(|| Error::internal("the model answered no label"))?;
        Ok(Response::json(&Answer {
            label,
            probabilities,
        }))
    }
}

/// The PNG as 64 ink values in 0..1, row by row.
fn decode(png_bytes: &[u8]) -> Result<Vec<f32>, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    // 8-bit samples whatever the file holds (16-bit cut, palettes expanded).
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .map_err(|err| format!("the body is not a PNG image: {err}"))?;
    let (width, height) = {
        let info = reader.info();
        (info.width as usize, info.height as usize)
    };
    if (width as u64) * (height as u64) > MAX_PIXELS {
        return Err(format!(
            "the image is {width}×{height}; at most {MAX_PIXELS} pixels"
        ));
    }
    if width < SIDE || height < SIDE {
        return Err(format!(
            "the image is {width}×{height}; at least {SIDE}×{SIDE} is needed"
        ));
    }
    let mut buffer = vec![
        0;
        reader
            .output_buffer_size()
            .ok_or("the image is too large")?
    ];
    let frame = reader
        .next_frame(&mut buffer)
        .map_err(|err| format!("the PNG cannot be decoded: {err}"))?;
    let channels = frame.color_type.samples();
    let gray = |x: usize, y: usize| -> f32 {
        let at = (y * width + x) * channels;
        let px = &buffer[at..at + channels];
        let (luma, alpha) = match channels {
            1 => (f32::from(px[0]), 255.0),
            2 => (f32::from(px[0]), f32::from(px[1])),
            3 => (luminance(px), 255.0),
            _ => (luminance(px), f32::from(px[3])),
        };
        // Transparent pixels are paper.
        let alpha = alpha / 255.0;
        luma * alpha + 255.0 * (1.0 - alpha)
    };
    let mut ink = Vec::with_capacity(SIDE * SIDE);
    for row in 0..SIDE {
        let (y0, y1) = (row * height / SIDE, (row + 1) * height / SIDE);
        for col in 0..SIDE {
            let (x0, x1) = (col * width / SIDE, (col + 1) * width / SIDE);
            let mut sum = 0.0;
            for y in y0..y1 {
                for x in x0..x1 {
                    sum += gray(x, y);
                }
            }
            let mean = sum / ((y1 - y0) * (x1 - x0)) as f32;
            ink.push(1.0 - mean / 255.0);
        }
    }
    Ok(ink)
}

/// ITU-R BT.601 luma of an RGB pixel.
fn luminance(px: &[u8]) -> f32 {
    0.299 * f32::from(px[0]) + 0.587 * f32::from(px[1]) + 0.114 * f32::from(px[2])
}

edgeship_module::entry_module!(ImageLabel);
