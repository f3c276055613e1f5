//! The leading master: registry of frameworks and agents (kept in coord), the DRF allocator,
//! offers, the task lifecycle, the operator API and the HTTP dashboard.
//!
//! Not built yet: this crate arrives with the two-level scheduling issue. It will depend on
//! `drover-coord` (leadership and registry) and `drover-proto` (scheduler, agent and operator APIs),
//! and its allocator will be a sans-IO core like coord's.
