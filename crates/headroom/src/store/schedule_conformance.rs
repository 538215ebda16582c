//! The conformance suite every `ScheduleStore` backend passes.
