//! A component of another world (`run` takes and returns numbers, no `init`), for the test
//! that registration refuses it and names why.

// wit-bindgen's raw bindings, used here without the SDK that wraps them.
#![allow(unsafe_code)]

wit_bindgen::generate!({
    inline: "
        package test:wrong;

        world wrong {
            export run: func(x: u32) -> u32;
        }
    ",
});

struct Wrong;

impl Guest for Wrong {
    fn run(x: u32) -> u32 {
        x + 1
    }
}

export!(Wrong);
