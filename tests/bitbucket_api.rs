//! The REST client against the REST double. Placeholder.
mod support;
