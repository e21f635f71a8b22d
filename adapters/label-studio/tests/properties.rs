//! Property tests of the adapter's parsers of client input: Label Studio label configs (XML)
//! and webhook bodies (JSON). Any input gives a result or a clear error, never a panic; valid
//! generated configs give exactly their classes.

use alps_label_studio::{
    label_config::{self, LabelConfig, MAX_CONFIG_BYTES, SUPPORTED_EXAMPLE, UnsupportedConfig},
    labels::{WEBHOOK_ACTIONS, Work, webhook_work},
};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Tag soup: tags with attributes, closing tags, declarations and text.
const MARKUP: &str = r#"(<[A-Za-z/!?]{0,2}[A-Za-z]{0,8}( [a-zA-Z]{1,6}="[^"]{0,6}")*/?>|[^<]{0,4}){0,12}"#;

fn config() -> ProptestConfig {
    ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(256) }
}

/// The documented error contract: a short printable-ASCII cause (it becomes an HTTP reason
/// phrase) and a non-empty detail.
fn check_error(error: &UnsupportedConfig) -> Result<(), TestCaseError> {
    prop_assert!(!error.cause.is_empty());
    prop_assert!(error.cause.bytes().all(|b| (b' '..=b'~').contains(&b)), "cause {:?}", error.cause);
    prop_assert!(!error.detail.is_empty());
    Ok(())
}

fn check_parse(xml: &str) -> Result<Option<LabelConfig>, TestCaseError> {
    match label_config::parse(xml) {
        Ok(parsed) => {
            prop_assert!(parsed.labels.len() >= 2 && parsed.labels.len() <= label_config::MAX_LABELS);
            prop_assert!(!parsed.image_key.is_empty() && !parsed.image_name.is_empty());
            prop_assert!(!parsed.choices_name.is_empty());
            Ok(Some(parsed))
        }
        Err(error) => {
            check_error(&error)?;
            Ok(None)
        }
    }
}

/// XML-escapes text for an attribute value.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// Label text: any characters XML allows, spaces and markup included (escaped later).
fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _.,:;!?&<>\"'/éß€😀-]{1,12}"
}

/// Tag names: as [`text`] without commas and spaces (`toName` is a comma-separated, trimmed list).
fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.:;!?&<>\"'/éß€😀-]{1,12}"
}

/// A supported config with random names, key, labels (some with aliases), wrappers and extra
/// tags; and the labels it must give.
fn valid_config() -> impl Strategy<Value = (String, Vec<String>, String, String, String)> {
    (
        name(),
        "[a-z][a-z0-9_]{0,10}",
        name(),
        proptest::collection::hash_set(text(), 2..12),
        proptest::collection::vec(any::<bool>(), 12),
        0usize..3,
        any::<bool>(),
    )
        .prop_map(|(image_name, key, choices_name, labels, aliased, depth, extras)| {
            let labels: Vec<String> = labels.into_iter().collect();
            let choices: String = labels
                .iter()
                .zip(&aliased)
                .map(|(label, &alias)| {
                    if alias {
                        format!(r#"<Choice value="v-{}" alias="{}"/>"#, escape(label), escape(label))
                    } else {
                        format!(r#"<Choice value="{}"/>"#, escape(label))
                    }
                })
                .collect();
            let mut body = format!(
                r#"<Image name="{}" value="${key}"/><Choices name="{}" toName="{}" choice="single">{}</Choices>"#,
                escape(&image_name),
                escape(&choices_name),
                escape(&image_name),
                choices,
            );
            if extras {
                body = format!(
                    r#"<Header value="Pick one"/>{body}<TextArea name="note" toName="{}"/><!-- a comment -->"#,
                    escape(&image_name)
                );
            }
            for _ in 0..depth {
                body = format!("<View style=\"x\">{body}</View>");
            }
            (format!("<View>{body}</View>"), labels, image_name, key, choices_name)
        })
}

/// An edit of a string: delete, insert or replace a character, or cut it.
#[derive(Clone, Debug)]
enum Edit {
    Delete(proptest::sample::Index),
    Insert(proptest::sample::Index, char),
    Replace(proptest::sample::Index, char),
    Cut(proptest::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let markup =
        prop_oneof![Just('<'), Just('>'), Just('/'), Just('"'), Just('&'), Just('='), Just('$'), any::<char>()];
    prop_oneof![
        any::<proptest::sample::Index>().prop_map(Edit::Delete),
        (any::<proptest::sample::Index>(), markup.clone()).prop_map(|(at, c)| Edit::Insert(at, c)),
        (any::<proptest::sample::Index>(), markup).prop_map(|(at, c)| Edit::Replace(at, c)),
        any::<proptest::sample::Index>().prop_map(Edit::Cut),
    ]
}

fn apply(text: &str, edit: &Edit) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let at = |index: &proptest::sample::Index| index.index(chars.len().max(1));
    match edit {
        Edit::Delete(index) if !chars.is_empty() => {
            chars.remove(at(index));
        }
        Edit::Insert(index, c) => {
            let at = index.index(chars.len() + 1);
            chars.insert(at, *c);
        }
        Edit::Replace(index, c) if !chars.is_empty() => {
            let at = at(index);
            chars[at] = *c;
        }
        Edit::Cut(index) => {
            let at = index.index(chars.len() + 1);
            chars.truncate(at);
        }
        _ => {}
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text_never_panics(xml in any::<String>()) {
        check_parse(&xml)?;
    }

    #[test]
    fn arbitrary_markup_never_panics(xml in MARKUP) {
        check_parse(&xml)?;
    }

    /// Generated supported configs give exactly their labels, names and key.
    #[test]
    fn valid_configs_give_their_classes((xml, labels, image_name, key, choices_name) in valid_config()) {
        let parsed = label_config::parse(&xml);
        prop_assert_eq!(
            parsed,
            Ok(LabelConfig { image_name, image_key: key, choices_name, labels }),
            "{}", xml
        );
    }

    /// Valid configs with a few random edits: parsed or refused with a clear error.
    #[test]
    fn mutated_configs_never_panic(
        (xml, ..) in valid_config(),
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        let mutated = edits.iter().fold(xml, |text, edit| apply(&text, edit));
        check_parse(&mutated)?;
    }

    /// Attribute values the parser quotes back in its error stay printable ASCII.
    #[test]
    fn error_causes_are_printable_ascii(choice in any::<String>()) {
        let xml = format!(
            r#"<View><Image name="i" value="$i"/><Choices name="c" toName="i" choice="{}">{}</Choices></View>"#,
            escape(&choice),
            r#"<Choice value="a"/><Choice value="b"/>"#,
        );
        check_parse(&xml)?;
    }
}

/// Regression: a `choice` attribute with a line break or non-ASCII text used to be copied into
/// the cause, which is documented as printable ASCII.
#[test]
fn a_choice_attribute_with_control_characters_gives_a_printable_cause() {
    let xml = "<View><Image name=\"i\" value=\"$i\"/><Choices name=\"c\" toName=\"i\" choice=\"multiple&#10;é\">\
               <Choice value=\"a\"/><Choice value=\"b\"/></Choices></View>";
    let error = label_config::parse(xml).unwrap_err();
    assert!(error.cause.bytes().all(|b| (b' '..=b'~').contains(&b)), "{:?}", error.cause);
    assert!(error.cause.starts_with("choice=multiple"), "{:?}", error.cause);
}

#[test]
fn a_config_at_the_size_limit_is_refused_cleanly() {
    let xml = format!("{SUPPORTED_EXAMPLE}{}", " ".repeat(MAX_CONFIG_BYTES));
    assert_eq!(label_config::parse(&xml).unwrap_err().cause, "config too large");
}

/// Any JSON value, nested a few levels, with the keys webhooks use common.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("id".to_owned()),
        Just("task".to_owned()),
        Just("annotation".to_owned()),
        Just("annotations".to_owned()),
        Just("tasks".to_owned()),
        Just("data".to_owned()),
        Just("image".to_owned()),
        Just("result".to_owned()),
        Just("value".to_owned()),
        Just("choices".to_owned()),
        Just("from_name".to_owned()),
        Just("type".to_owned()),
        Just("was_cancelled".to_owned()),
        Just("ground_truth".to_owned()),
        Just("updated_at".to_owned()),
        "[a-z]{1,4}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![Just("label".to_owned()), Just("choices".to_owned()), Just("Car".to_owned()), any::<String>()]
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn supported() -> LabelConfig {
    label_config::parse(SUPPORTED_EXAMPLE).unwrap()
}

/// A webhook body shaped like Label Studio's, with one subtree replaced by arbitrary JSON.
fn near_valid_body() -> impl Strategy<Value = Value> {
    let base = json!({
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": 5, "task": 7, "was_cancelled": false, "updated_at": "2025-01-01T00:00:00Z",
            "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["Car"]}}]},
        "task": {"id": 7, "data": {"image": "/data/upload/1/a.png"}},
        "annotations": [{"id": 5}],
        "tasks": [{"id": 7}],
    });
    let paths: [&[&str]; 10] = [
        &["annotation"],
        &["annotation", "id"],
        &["annotation", "result"],
        &["annotation", "task"],
        &["task"],
        &["task", "id"],
        &["task", "data"],
        &["annotations"],
        &["tasks"],
        &[],
    ];
    (proptest::sample::select(paths.to_vec()), json_value()).prop_map(move |(path, replacement)| {
        let mut body = base.clone();
        match path.split_last() {
            None => body = replacement,
            Some((last, parents)) => {
                let parent = parents.iter().fold(&mut body, |node, key| &mut node[*key]);
                parent[*last] = replacement;
            }
        }
        body
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_webhook_bodies_never_panic(
        // Every handled action, and one Label Studio may add later (unknown: no work).
        action in proptest::sample::select(WEBHOOK_ACTIONS.into_iter().chain([""]).collect::<Vec<_>>()),
        body in json_value(),
    ) {
        let work = webhook_work(action, &body, &supported());
        if matches!(action, "ANNOTATIONS_DELETED" | "TASKS_DELETED" | "START_TRAINING") {
            prop_assert_eq!(work.len(), 1);
        }
        if matches!(action, "PROJECT_UPDATED" | "") {
            prop_assert!(work.is_empty());
        }
    }

    /// Near-valid bodies: every annotation item's label, when there is one, is a class of the
    /// config and belongs to the item's task.
    #[test]
    fn near_valid_webhook_bodies_give_consistent_work(
        action in proptest::sample::select(WEBHOOK_ACTIONS[..5].to_vec()),
        body in near_valid_body(),
    ) {
        let config = supported();
        for item in webhook_work(action, &body, &config) {
            match item {
                Work::Annotation { task, label: Some(label), .. } => {
                    prop_assert_eq!(label.task, task);
                    prop_assert!(config.labels.contains(&label.label), "{}", label.label);
                }
                Work::AnnotationsDeleted(ids) | Work::TasksDeleted(ids) => prop_assert!(ids.len() <= 64),
                _ => {}
            }
        }
    }
}
