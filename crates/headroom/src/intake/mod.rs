//! Webhook intake: deliveries from providers, verified, stored before they are
//! acknowledged, and handed to processing.

pub mod verify;
