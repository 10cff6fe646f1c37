//! TEMPORARY: replaced by the store module under construction.
use serde::{Deserialize, Serialize};
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
pub struct StoreConfig {
    pub url: String,
    pub secret_access_key: Option<String>,
}
