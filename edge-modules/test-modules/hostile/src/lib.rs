//! A module that misbehaves on request, for the sandbox's tests: the request path's last
//! segment (or the body) says how. `loop` never returns, `bomb` allocates without end,
//! `panic` panics, `file` tries to read outside and write inside the model folder, `socket`
//! tries to connect, `clock` reports the wall clock; anything else answers `ok`.

use edgeship_module::{EntryModule, Error, Request, Response};

#[derive(Debug)]
struct Hostile;

impl EntryModule for Hostile {
    fn init() -> Result<Self, String> {
        Ok(Hostile)
    }

    fn run(&mut self, request: &Request) -> Result<Response, Error> {
        let body = String::from_utf8_lossy(&request.body);
        match body.trim() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("asked to panic"),
            "file" => {
                let outside = std::fs::read_to_string("/etc/passwd")
                    .map(|_| "read".to_owned())
                    .unwrap_or_else(|err| format!("denied: {err}"));
                let model = std::fs::read_dir("/model")
                    .map(|entries| format!("{} entries", entries.count()))
                    .unwrap_or_else(|err| format!("denied: {err}"));
                let write = std::fs::write("/model/planted", b"x")
                    .map(|()| "written".to_owned())
                    .unwrap_or_else(|err| format!("denied: {err}"));
                Ok(Response::text(
                    200,
                    format!("outside: {outside}\nmodel: {model}\nwrite: {write}"),
                ))
            }
            "socket" => {
                let connect = std::net::TcpStream::connect("127.0.0.1:1883")
                    .map(|_| "connected".to_owned())
                    .unwrap_or_else(|err| format!("denied: {err}"));
                Ok(Response::text(200, format!("socket: {connect}")))
            }
            "clock" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(u64::MAX);
                Ok(Response::text(200, format!("wall clock: {now}")))
            }
            _ => {
                println!("hostile module asked for {body:?}");
                Ok(Response::text(200, "ok"))
            }
        }
    }
}

edgeship_module::entry_module!(Hostile);
