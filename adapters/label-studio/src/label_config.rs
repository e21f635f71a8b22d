//! Label Studio label configs (the `<View>` XML of a project): which ones the adapter supports
//! and what it needs from them.
//!
//! Supported: exactly one `<Image value="$key">` and exactly one single-choice `<Choices>` on it
//! with at least two static `<Choice>` labels. Everything else is rejected with a short cause (for
//! the HTTP reason phrase) and a detail (for the JSON body).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use roxmltree::{Document, Node, ParsingOptions};
use sha2::{Digest, Sha256};

/// Largest label config accepted, in bytes. Real configs are a few KiB.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Most labels a config may have (each becomes a class of the model).
pub const MAX_LABELS: usize = 1000;

/// A config the adapter can serve, shown to users whose config is rejected.
pub const SUPPORTED_EXAMPLE: &str = "<View><Image name=\"image\" value=\"$image\"/><Choices name=\"label\" \
                                     toName=\"image\" choice=\"single\"><Choice value=\"Car\"/><Choice \
                                     value=\"Truck\"/></Choices></View>";

/// What the adapter uses of a supported label config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelConfig {
    /// `name` of the `<Image>` object tag: the `to_name` of predicted regions.
    pub image_name: String,
    /// Task data key holding the image reference (`value="$image"` -> `image`).
    pub image_key: String,
    /// `name` of the `<Choices>` control: the `from_name` of predicted regions.
    pub choices_name: String,
    /// Label strings in config order (`alias` if set, else `value`); the project's classes.
    pub labels: Vec<String>,
}

/// Why a label config cannot be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unsupported label config: {detail}")]
pub struct UnsupportedConfig {
    /// Short cause for the HTTP reason phrase ("2 Choices controls"), printable ASCII.
    pub cause: String,
    /// Full explanation for the JSON body.
    pub detail: String,
}

fn unsupported(cause: impl Into<String>, detail: impl Into<String>) -> UnsupportedConfig {
    UnsupportedConfig { cause: cause.into(), detail: detail.into() }
}

/// Parses `xml` and checks it is a supported image-classification config.
///
/// # Errors
/// [`UnsupportedConfig`] for malformed or oversized XML, DTDs, and every config shape other than
/// one Image + one single-choice Choices with two or more static labels.
pub fn parse(xml: &str) -> Result<LabelConfig, UnsupportedConfig> {
    if xml.len() > MAX_CONFIG_BYTES {
        return Err(unsupported(
            "config too large",
            format!("label config is {} bytes; at most {MAX_CONFIG_BYTES}", xml.len()),
        ));
    }
    if xml.trim().is_empty() {
        return Err(unsupported("empty config", "the label config is empty"));
    }
    // DTDs (and so entity expansion) stay off: roxmltree rejects them unless allowed.
    let options = ParsingOptions { allow_dtd: false, ..ParsingOptions::default() };
    let document = Document::parse_with_options(xml, options)
        .map_err(|error| unsupported("invalid XML", format!("label config is not well-formed XML: {error}")))?;
    let elements: Vec<Node> = document.descendants().filter(Node::is_element).collect();
    let image = single_image(&elements)?;
    let choices = single_choices(&elements, &image.name)?;
    for control in elements.iter().filter(|node| is_other_control(node)) {
        tracing::warn!(tag = control.tag_name().name(), name = control.attribute("name"), "ignoring control");
    }
    Ok(LabelConfig { image_name: image.name, image_key: image.key, choices_name: choices.name, labels: choices.labels })
}

struct ImageTag {
    name: String,
    key: String,
}

fn single_image(elements: &[Node]) -> Result<ImageTag, UnsupportedConfig> {
    let images: Vec<&Node> = elements.iter().filter(|node| node.has_tag_name("Image")).collect();
    let [image] = images.as_slice() else {
        return Err(unsupported(
            format!("{} Image tags", images.len()),
            format!("found {} <Image> tags; exactly one <Image> with one <Choices> is supported", images.len()),
        ));
    };
    let name = image.attribute("name").unwrap_or_default();
    let value = image.attribute("value").unwrap_or_default();
    let key = value.strip_prefix('$').filter(|key| !key.is_empty() && !name.is_empty()).ok_or_else(|| {
        unsupported("Image needs name and value=$key", "the <Image> needs a name and a value such as \"$image\"")
    })?;
    Ok(ImageTag { name: name.to_owned(), key: key.to_owned() })
}

struct ChoicesTag {
    name: String,
    labels: Vec<String>,
}

fn single_choices(elements: &[Node], image_name: &str) -> Result<ChoicesTag, UnsupportedConfig> {
    let all: Vec<&Node> = elements.iter().filter(|node| node.has_tag_name("Choices")).collect();
    let [choices] = all.as_slice() else {
        let names: Vec<&str> = all.iter().filter_map(|node| node.attribute("name")).collect();
        return Err(unsupported(
            format!("{} Choices controls", all.len()),
            format!(
                "found {} <Choices> controls ({}); exactly one <Choices> on one <Image> is supported",
                all.len(),
                names.join(", ")
            ),
        ));
    };
    let name = choices.attribute("name").unwrap_or_default();
    let targets: Vec<&str> = choices.attribute("toName").unwrap_or_default().split(',').map(str::trim).collect();
    if name.is_empty() || targets != [image_name] {
        return Err(unsupported(
            "Choices not on the Image",
            format!("<Choices name={name:?}> must have a name and toName={image_name:?} (the <Image>)"),
        ));
    }
    check_choices_attributes(choices)?;
    let labels = static_labels(choices)?;
    Ok(ChoicesTag { name: name.to_owned(), labels })
}

fn check_choices_attributes(choices: &Node) -> Result<(), UnsupportedConfig> {
    match choices.attribute("choice").unwrap_or("single") {
        "single" | "single-radio" => {}
        other => {
            return Err(unsupported(
                // The cause is printable ASCII (a reason phrase); the value is the client's.
                format!("choice={}", other.escape_default()),
                format!("<Choices choice={other:?}> is not supported; use choice=\"single\" (one label per image)"),
            ));
        }
    }
    if choices.attribute("perRegion").is_some_and(|value| value == "true") {
        return Err(unsupported("perRegion Choices", "per-region <Choices> are not supported"));
    }
    let dynamic = choices.attribute("value").is_some_and(|value| value.starts_with('$'));
    if dynamic || choices.attribute("apiUrl").is_some() {
        return Err(unsupported("dynamic labels", "dynamic labels (value=\"$...\" or apiUrl) are not supported"));
    }
    Ok(())
}

fn static_labels(choices: &Node) -> Result<Vec<String>, UnsupportedConfig> {
    let mut labels: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for choice in choices.descendants().filter(|node| node.has_tag_name("Choice")) {
        let label = choice.attribute("alias").or_else(|| choice.attribute("value")).unwrap_or_default();
        if label.is_empty() {
            return Err(unsupported("Choice without value", "every <Choice> needs a value"));
        }
        if !seen.insert(label) {
            return Err(unsupported("duplicate Choice", format!("label {label:?} appears twice")));
        }
        if labels.len() == MAX_LABELS {
            return Err(unsupported("too many Choice labels", format!("more than {MAX_LABELS} <Choice> labels")));
        }
        labels.push(label.to_owned());
    }
    if labels.len() < 2 {
        return Err(unsupported(
            "fewer than 2 Choice labels",
            format!("found {} <Choice> labels; at least two are needed to train a classifier", labels.len()),
        ));
    }
    Ok(labels)
}

/// A control tag other than the supported Choices (`TextArea`, `Labels`, ...), ignored.
/// `Filter` has `toName` but is no control.
fn is_other_control(node: &Node) -> bool {
    node.attribute("toName").is_some() && !node.has_tag_name("Choices") && !node.has_tag_name("Filter")
}

/// Parses each distinct config once (configs arrive with every `/setup` and `/predict`).
#[derive(Debug, Default)]
pub struct ConfigCache {
    /// Keyed by the SHA-256 of the config text.
    parsed: Mutex<HashMap<[u8; 32], Parsed>>,
}

type Parsed = Arc<Result<LabelConfig, UnsupportedConfig>>;

/// Distinct configs kept; more are unusual (one per project), so the cache simply starts over.
const CACHE_CAPACITY: usize = 1024;

impl ConfigCache {
    /// The parse of `xml`, from the cache when seen before.
    ///
    /// # Errors
    /// As [`parse`].
    pub fn get(&self, xml: &str) -> Result<LabelConfig, UnsupportedConfig> {
        let key: [u8; 32] = Sha256::digest(xml.as_bytes()).into();
        if let Some(hit) = self.parsed.lock().expect("config cache poisoned").get(&key) {
            return hit.as_ref().clone();
        }
        // Parsed outside the lock: a large config must not hold up other requests.
        let result = Arc::new(parse(xml));
        let mut parsed = self.parsed.lock().expect("config cache poisoned");
        if parsed.len() >= CACHE_CAPACITY {
            parsed.clear();
        }
        parsed.insert(key, Arc::clone(&result));
        result.as_ref().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(body: &str) -> String {
        format!("<View>{body}</View>")
    }

    const IMAGE: &str = r#"<Image name="img" value="$photo"/>"#;

    #[test]
    fn image_with_single_choices_is_supported() {
        let xml = config(&format!(
            r#"{IMAGE}<Header value="Pick one"/><View><Choices name="label" toName="img" choice="single-radio" showInline="true">
               <Choice value="Car"/><View><Choice value="truck" alias="Truck"/></View></Choices></View>
               <TextArea name="comment" toName="img"/>"#
        ));
        let parsed = parse(&xml).unwrap();
        assert_eq!(
            parsed,
            LabelConfig {
                image_name: "img".into(),
                image_key: "photo".into(),
                choices_name: "label".into(),
                labels: vec!["Car".into(), "Truck".into()],
            }
        );
    }

    #[test]
    fn the_supported_example_is_supported() {
        assert_eq!(parse(SUPPORTED_EXAMPLE).unwrap().labels, ["Car", "Truck"]);
    }

    #[test]
    fn unsupported_configs_name_their_cause() {
        let two = r#"<Choices name="a" toName="img"><Choice value="x"/><Choice value="y"/></Choices>"#;
        let cases = [
            (String::new(), "empty config"),
            ("<View>".to_owned(), "invalid XML"),
            (config(""), "0 Image tags"),
            (config(&format!("{IMAGE}{IMAGE}{two}")), "2 Image tags"),
            (config(r#"<Image name="img" value="photo"/>"#), "Image needs name and value=$key"),
            (config(IMAGE), "0 Choices controls"),
            (config(&format!("{IMAGE}{two}{}", two.replace("\"a\"", "\"b\""))), "2 Choices controls"),
            (config(&format!("{IMAGE}{}", two.replace("img", "other"))), "Choices not on the Image"),
            (config(&format!("{IMAGE}{}", two.replace("toName", "choice=\"multiple\" toName"))), "choice=multiple"),
            (config(&format!("{IMAGE}{}", two.replace("toName", "perRegion=\"true\" toName"))), "perRegion Choices"),
            (config(&format!("{IMAGE}{}", two.replace("toName", "value=\"$opts\" toName"))), "dynamic labels"),
            (
                config(&format!(r#"{IMAGE}<Choices name="a" toName="img"><Choice value="x"/></Choices>"#)),
                "fewer than 2 Choice labels",
            ),
            (config(&format!("{IMAGE}{}", two.replace("\"y\"", "\"x\""))), "duplicate Choice"),
            (
                config(
                    r#"<Text name="t" value="$text"/><Choices name="a" toName="t"><Choice value="x"/><Choice value="y"/></Choices>"#,
                ),
                "0 Image tags",
            ),
        ];
        for (xml, cause) in cases {
            let error = parse(&xml).unwrap_err();
            assert_eq!(error.cause, cause, "{xml}");
            assert!(!error.detail.is_empty());
        }
    }

    #[test]
    fn two_choices_detail_lists_their_names() {
        let xml = config(&format!(
            r#"{IMAGE}<Choices name="label" toName="img"><Choice value="x"/><Choice value="y"/></Choices>
               <Choices name="quality" toName="img"><Choice value="ok"/><Choice value="bad"/></Choices>"#
        ));
        assert!(parse(&xml).unwrap_err().detail.contains("(label, quality)"));
    }

    #[test]
    fn label_count_is_capped() {
        let choices: String = (0..=MAX_LABELS).map(|i| format!(r#"<Choice value="c{i}"/>"#)).collect();
        let xml = config(&format!(r#"{IMAGE}<Choices name="a" toName="img">{choices}</Choices>"#));
        assert_eq!(parse(&xml).unwrap_err().cause, "too many Choice labels");
    }

    #[test]
    fn dtds_are_refused() {
        let xml = r#"<!DOCTYPE View [<!ENTITY a "aaaa">]><View>&a;</View>"#;
        assert_eq!(parse(xml).unwrap_err().cause, "invalid XML");
    }

    #[test]
    fn oversized_configs_are_refused_before_parsing() {
        let xml = format!("<View>{}</View>", " ".repeat(MAX_CONFIG_BYTES));
        assert_eq!(parse(&xml).unwrap_err().cause, "config too large");
    }

    #[test]
    fn the_cache_returns_the_same_parse() {
        let cache = ConfigCache::default();
        assert_eq!(cache.get(SUPPORTED_EXAMPLE), parse(SUPPORTED_EXAMPLE));
        assert_eq!(cache.get(SUPPORTED_EXAMPLE), parse(SUPPORTED_EXAMPLE));
        assert_eq!(cache.get("<View/>").unwrap_err().cause, "0 Image tags");
    }
}
