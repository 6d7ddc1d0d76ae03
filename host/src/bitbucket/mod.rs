//! Everything Bitbucket-specific: the webhook payloads of Cloud and Data
//! Center (`push`, `normalize`, `lenient`, read by `strict_json`, which
//! refuses duplicate keys), their HMAC signature, the REST
//! client, webhook registration and the secrets it generates.

pub mod hooks;
pub mod lenient;
pub mod normalize;
pub mod push;
pub mod rest;
pub mod secrets;
pub mod signature;
mod strict_json;
