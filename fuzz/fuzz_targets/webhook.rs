//! Webhook body to work translation: any JSON body, for every action, gives work items without
//! a panic, and every label it finds is a class of the config.

#![no_main]

use alps_label_studio::{
    label_config,
    labels::{WEBHOOK_ACTIONS, Work, webhook_work},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(bytes) else { return };
    let config = label_config::parse(label_config::SUPPORTED_EXAMPLE).expect("the supported example parses");
    for action in WEBHOOK_ACTIONS {
        for work in webhook_work(action, &body, &config) {
            if let Work::Annotation { task, label: Some(label), .. } = work {
                assert_eq!(label.task, task);
                assert!(config.labels.contains(&label.label));
            }
        }
    }
});
