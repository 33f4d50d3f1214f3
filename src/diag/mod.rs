//! Diagnostics that record and know nobody: the flight recorder, trace spans, the watchdog
//! (which asks comm what it needs through hooks it is given) and `doctor`, which reads flight
//! records. The layers above call them.

pub mod doctor;
pub mod flight;
pub mod trace;
pub mod watchdog;
