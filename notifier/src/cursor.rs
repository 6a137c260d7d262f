//! The SSE `id:`: offsets over all partitions — the next offset of every partition after the
//! event — so `Last-Event-ID` says exactly what the client has seen, in every partition.

pub use foldline_service::position::Offsets as Cursor;
