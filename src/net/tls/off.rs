//! A build without TLS (cargo feature `tls` off, for embedders who want
//! the smallest binary): loading a configuration fails with a clear error,
//! and [`rustls`] holds uninhabited stand-ins for the few rustls types the
//! transport and the client name, so their TLS branches compile and can
//! never run (no value of these types can exist). Config validation
//! refuses `[server.tls]` and `[storage.backend.tls]` before this is
//! reached.

use super::{ClientFiles, ServerFiles, ServerTls};
use std::sync::Arc;

/// What an operator reads when a TLS setting meets a build without TLS.
pub const NOT_BUILT: &str =
    "this zeoraid was built without TLS (cargo feature `tls`); rebuild with default features or remove the TLS settings";

pub fn load_server(_: &ServerFiles) -> Result<ServerTls, String> {
    Err(NOT_BUILT.to_string())
}

pub fn load_client(_: &ClientFiles) -> Result<Arc<rustls::ClientConfig>, String> {
    Err(NOT_BUILT.to_string())
}

pub fn server_name(
    _: Option<&str>,
    _: Option<&str>,
) -> Result<rustls::pki_types::ServerName<'static>, String> {
    Err(NOT_BUILT.to_string())
}

pub fn explain(e: &rustls::Error) -> String {
    e.to_string()
}

/// Uninhabited stand-ins for the rustls types zeoraid names.
pub mod rustls {
    use std::io::{self, Read, Write};
    use std::sync::Arc;

    pub enum ServerConfig {}
    pub enum ClientConfig {}

    /// Inhabited, so that code after a failed TLS setup is not
    /// unreachable to the compiler; never made.
    #[derive(Debug)]
    pub struct Error;

    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(super::NOT_BUILT)
        }
    }

    impl std::error::Error for Error {}

    pub mod pki_types {
        pub struct ServerName<'a>(std::marker::PhantomData<&'a ()>);
    }

    pub enum ServerConnection {}
    pub enum ClientConnection {}

    impl ServerConnection {
        pub fn new(config: Arc<ServerConfig>) -> Result<Self, Error> {
            match *config {}
        }
    }

    impl ClientConnection {
        pub fn new(
            config: Arc<ClientConfig>,
            _: pki_types::ServerName<'static>,
        ) -> Result<Self, Error> {
            match *config {}
        }
        pub fn set_buffer_limit(&mut self, _: Option<usize>) {
            match *self {}
        }
        pub fn complete_io<T: Read + Write>(&mut self, _: &mut T) -> io::Result<(usize, usize)> {
            match *self {}
        }
    }

    /// The session methods both sides use.
    macro_rules! session {
        ($t:ty) => {
            impl $t {
                pub fn is_handshaking(&self) -> bool {
                    match *self {}
                }
                pub fn wants_write(&self) -> bool {
                    match *self {}
                }
                pub fn reader(&mut self) -> &mut dyn Read {
                    match *self {}
                }
                pub fn writer(&mut self) -> &mut dyn Write {
                    match *self {}
                }
                pub fn read_tls(&mut self, _: &mut dyn Read) -> io::Result<usize> {
                    match *self {}
                }
                pub fn write_tls(&mut self, _: &mut dyn Write) -> io::Result<usize> {
                    match *self {}
                }
                pub fn process_new_packets(&mut self) -> Result<(), Error> {
                    match *self {}
                }
                pub fn send_close_notify(&mut self) {
                    match *self {}
                }
            }
        };
    }
    session!(ServerConnection);
    session!(ClientConnection);
}
