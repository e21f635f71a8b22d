//! Label Studio label configs: any text parses to a supported config or a clear error whose
//! cause is printable ASCII (it becomes an HTTP reason phrase).

#![no_main]

use alps_label_studio::label_config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|xml: &str| {
    match label_config::parse(xml) {
        Ok(config) => {
            assert!(config.labels.len() >= 2 && config.labels.len() <= label_config::MAX_LABELS);
            assert!(!config.image_name.is_empty() && !config.image_key.is_empty() && !config.choices_name.is_empty());
        }
        Err(error) => {
            assert!(!error.cause.is_empty() && error.cause.bytes().all(|b| (b' '..=b'~').contains(&b)));
            assert!(!error.detail.is_empty());
        }
    }
});
