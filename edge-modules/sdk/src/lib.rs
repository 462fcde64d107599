//! Write an edgeship entry module in a few lines: implement [`EntryModule`] (`init` once per
//! instance, `run` once per request) and name the type in [`entry_module!`]. Inside `run`,
//! [`infer`] runs the deployment's models on [`Tensor`]s. The interface underneath is the WIT
//! world `edgeship:entry/entry@1.0.0` (`edge-modules/wit/entry.wit`).
//!
//! ```ignore
//! use edgeship_module::{EntryModule, Error, Request, Response, Tensor, infer};
//!
//! struct Doubler;
//!
//! impl EntryModule for Doubler {
//!     fn init() -> Result<Self, String> {
//!         Ok(Doubler)
//!     }
//!
//!     fn run(&mut self, request: &Request) -> Result<Response, Error> {
//!         let rows: Vec<Vec<f32>> = request.json()?;
//!         let flat: Vec<f32> = rows.iter().flatten().map(|x| x * 2.0).collect();
//!         let input = Tensor::from_f32("x", &[rows.len() as u64, 10], &flat);
//!         let outputs = infer("", &[input])?;
//!         Ok(Response::json(&outputs[0].to_f32()?))
//!     }
//! }
//!
//! edgeship_module::entry_module!(Doubler);
//! ```

use std::any::Any;
use std::cell::RefCell;

extern crate self as edgeship_module;

/// The bindings wit-bindgen generates from the WIT world; use the re-exports instead.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "entry",
        pub_export_macro: true,
        export_macro_name: "__export_entry",
        runtime_path: "::edgeship_module::__wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

pub use bindings::edgeship::entry::types::{
    ElementType, ModelInfo, Request, Response, Tensor, TensorInfo,
};

mod tensor;

/// An entry module: what a deployment runs around its models.
pub trait EntryModule: Sized + 'static {
    /// Runs once per instance before any request. An error fails the deployment's version
    /// (the previous version keeps serving) with this message.
    fn init() -> Result<Self, String>;

    /// Runs once per request. An [`Error`] answers with its status and a JSON `message`.
    fn run(&mut self, request: &Request) -> Result<Response, Error>;
}

/// A request that cannot be answered: the status and what the caller is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: u16,
    pub message: String,
}

impl Error {
    /// 400: the caller sent something this module cannot use.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }

    /// 500: the module or a model failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: message.into(),
        }
    }
}

/// A model's or the host's refusal (a string from `infer`) is the module's failure.
impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::internal(message)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl Request {
    /// A header's value by name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter's value (`?k=3`), undecoded.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// The body as JSON of type `T`; a 400 naming what is wrong otherwise.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|err| Error::bad_request(format!("the body is not the JSON expected: {err}")))
    }
}

impl Response {
    /// 200 with `value` as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response {
                status: 200,
                content_type: "application/json".into(),
                headers: Vec::new(),
                body,
            },
            Err(err) => {
                Error::internal(format!("the answer cannot be written as JSON: {err}")).into()
            }
        }
    }

    /// `status` with a plain-text body.
    pub fn text(status: u16, text: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8".into(),
            headers: Vec::new(),
            body: text.into().into_bytes(),
        }
    }
}

impl From<Error> for Response {
    /// `{"message": …}` with the error's status, as the agent's own errors are.
    fn from(error: Error) -> Self {
        let body = serde_json::json!({ "message": error.message });
        Response {
            status: error.status,
            content_type: "application/json".into(),
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
        }
    }
}

/// The deployment's models, in manifest order.
pub fn models() -> Vec<ModelInfo> {
    bindings::edgeship::entry::host::models()
}

/// Runs a model on `inputs` (in its input order) and returns its outputs. `model` names one
/// of [`models`]; empty is the model the endpoint routed this request to.
pub fn infer(model: &str, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
    bindings::edgeship::entry::host::infer(model, inputs)
}

thread_local! {
    /// The module's state between calls (a component instance is single-threaded).
    static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

#[doc(hidden)]
pub fn __init<M: EntryModule>() -> Result<(), String> {
    let module = M::init()?;
    STATE.with(|state| *state.borrow_mut() = Some(Box::new(module)));
    Ok(())
}

#[doc(hidden)]
pub fn __run<M: EntryModule>(request: Request) -> Response {
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        match state.as_mut().and_then(|s| s.downcast_mut::<M>()) {
            Some(module) => module.run(&request).unwrap_or_else(Response::from),
            None => Error::internal("run was called before init").into(),
        }
    })
}

/// Exports `$module` (an [`EntryModule`]) as the component's `init` and `run`.
#[macro_export]
macro_rules! entry_module {
    ($module:ty) => {
        #[doc(hidden)]
        struct __EdgeshipEntry;

        impl $crate::bindings::Guest for __EdgeshipEntry {
            fn init() -> ::std::result::Result<(), ::std::string::String> {
                $crate::__init::<$module>()
            }

            fn run(request: $crate::Request) -> $crate::Response {
                $crate::__run::<$module>(request)
            }
        }

        $crate::bindings::__export_entry!(__EdgeshipEntry with_types_in $crate::bindings);
    };
}
