//! What framework authors use: connect to the leading master, the event stream, the scheduler
//! calls, resource arithmetic and placement helpers.
//!
//! Not built yet: this crate arrives with the two-level scheduling issue. It depends only on
//! `drover-proto` (and on coord's client for frameworks that keep state or elect a leader).
