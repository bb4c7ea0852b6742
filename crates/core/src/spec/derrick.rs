//! Derrick's workspace config (`{"name", "repositories": [{"url", "path",
//! "reference"}], "setup_script"}`), read as Derrick reads it: fields it
//! does not know are ignored, and repository paths are paths in the
//! workspace's filesystem (`/code/app`), relative ones from `/`, where
//! Derrick's commands run. berth's own spec fields are read too, so one
//! file can serve both.

use super::{Format, Spec, SpecError, SpecKind, located};
use serde_json::Value;
use serde_path_to_error::Segment;
use std::path::Path;

/// A Derrick config, read into a spec.
#[derive(Debug, Clone, PartialEq)]
pub struct DerrickConfig {
    /// Its root is `/` unless the file names another.
    pub spec: Spec,
    /// The fields berth ignored, as `repositories[0].name`, for a warning.
    pub ignored: Vec<String>,
}

impl Spec {
    /// Reads a Derrick workspace config. It is JSON, as Derrick reads it,
    /// unless its extension says TOML or YAML.
    pub fn from_derrick_file(file: &Path) -> Result<DerrickConfig, SpecError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| SpecError::field("", format!("cannot read file: {e}")).in_file(file))?;
        let format = Format::from_path(file).unwrap_or(Format::Json);
        let mut config = Spec::parse_derrick(&text, format).map_err(|e| e.in_file(file))?;
        config
            .spec
            .resolve_local_urls(file.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    /// Reads a Derrick workspace config from text.
    pub fn parse_derrick(text: &str, format: Format) -> Result<DerrickConfig, SpecError> {
        let whole = |e: &dyn std::fmt::Display| SpecError::field("", e.to_string());
        let mut value: Value = match format {
            Format::Json => serde_json::from_str(text).map_err(|e| whole(&e))?,
            Format::Toml => toml::from_str(text).map_err(|e| whole(&e))?,
            Format::Yaml => serde_yaml_ng::from_str(text).map_err(|e| whole(&e))?,
        };
        if let Some(fields) = value.as_object_mut()
            && !fields.contains_key("root")
        {
            fields.insert("root".into(), Value::from("/"));
            // Paths in the filesystem, under the root `/`.
            let repositories = fields.get_mut("repositories").and_then(Value::as_array_mut);
            for repo in repositories.into_iter().flatten() {
                if let Some(Value::String(path)) = repo.get_mut("path") {
                    *path = path.trim_start_matches('/').to_string();
                }
            }
        }
        let mut ignored = Vec::new();
        // Each pass drops the first field the spec refuses as unknown; a
        // config has finitely many.
        let spec: Spec = loop {
            match serde_path_to_error::deserialize(value.clone()) {
                Ok(spec) => break spec,
                Err(err)
                    if is_unknown_field(&err.inner().to_string())
                        && remove(&mut value, err.path()) =>
                {
                    ignored.push(err.path().to_string());
                }
                Err(err) => return Err(located(SpecKind::Workspace, err)),
            }
        };
        spec.validate()?;
        Ok(DerrickConfig { spec, ignored })
    }
}

/// Whether serde refused a field as unknown; the error's path then ends
/// with it.
fn is_unknown_field(message: &str) -> bool {
    message.starts_with("unknown field `")
}

/// Removes the field at `path`; whether it was there.
fn remove(value: &mut Value, path: &serde_path_to_error::Path) -> bool {
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((Segment::Map { key: name }, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = value;
    for segment in parents {
        let next = match segment {
            Segment::Seq { index } => at.get_mut(*index),
            Segment::Map { key } => at.get_mut(key.as_str()),
            Segment::Enum { .. } | Segment::Unknown => None,
        };
        match next {
            Some(next) => at = next,
            None => return false,
        }
    }
    at.as_object_mut()
        .is_some_and(|fields| fields.remove(name.as_str()).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derrick(text: &str) -> Result<DerrickConfig, SpecError> {
        Spec::parse_derrick(text, Format::Json)
    }

    #[test]
    fn derricks_own_test_config_is_read_with_its_unknown_field_listed() {
        let config = derrick(
            r#"{"name": "swiftide-ask",
                "repositories": [{"name": "swiftide-ask", "path": "/code/swiftide-ask",
                                  "url": "https://github.com/bosun-ai/swiftide-ask"}],
                "setup_script": "rm /tmp/hello.txt; echo \"Hello World\" > /tmp/hello.txt"}"#,
        )
        .unwrap();
        assert_eq!(config.ignored, ["repositories[0].name"]);
        assert_eq!(config.spec.root(), "/");
        assert_eq!(
            config.spec.repositories[0].path.as_str(),
            "code/swiftide-ask"
        );
    }

    #[test]
    fn unknown_fields_anywhere_are_each_listed_once() {
        let config = derrick(
            r#"{"name": "n", "colour": 1, "repositories": [
                    {"url": "u", "path": "/a", "x": 1, "y": 2}, {"url": "v", "path": "b", "x": 3}],
                "limits": {"pids": 9, "swap": "1g"}, "setup_script": ""}"#,
        )
        .unwrap();
        let mut ignored = config.ignored.clone();
        ignored.sort();
        assert_eq!(
            ignored,
            [
                "colour",
                "limits.swap",
                "repositories[0].x",
                "repositories[0].y",
                "repositories[1].x"
            ]
        );
        assert_eq!(config.spec.limits.pids, Some(9));
        assert_eq!(config.spec.repositories[1].path.as_str(), "b");
    }

    #[test]
    fn the_harness_config_with_a_top_level_absolute_path_is_read() {
        let config =
            derrick(r#"{"name": "todo", "repositories": [{"url": "u", "path": "/todolist"}]}"#)
                .unwrap();
        assert_eq!(config.spec.repositories[0].path.as_str(), "todolist");
        assert!(config.ignored.is_empty());
    }

    #[test]
    fn a_config_that_names_a_root_keeps_berths_paths() {
        let config =
            derrick(r#"{"root": "/workspace", "repositories": [{"url": "u", "path": "code"}]}"#)
                .unwrap();
        assert_eq!(config.spec.root(), "/workspace");
        let err =
            derrick(r#"{"root": "/workspace", "repositories": [{"url": "u", "path": "/c"}]}"#)
                .unwrap_err();
        assert_eq!(err.field, "repositories[0].path", "{err}");
    }

    #[test]
    fn wrong_types_and_escaping_paths_are_still_refused_naming_the_field() {
        let err = derrick(r#"{"name": 5}"#).unwrap_err();
        assert_eq!(err.field, "name", "{err}");
        let err = derrick(r#"{"repositories": [{"url": "u", "path": "/../etc"}]}"#).unwrap_err();
        assert_eq!(err.field, "repositories[0].path", "{err}");
        let err = derrick(r#"{"repositories": [{"url": "u", "path": "/"}]}"#).unwrap_err();
        assert_eq!(err.field, "repositories[0].path", "{err}");
        assert!(err.message.contains("whole filesystem"), "{err}");
        let err = derrick(r#"{"repositories": "none"}"#).unwrap_err();
        assert_eq!(err.field, "repositories", "{err}");
    }

    #[test]
    fn berths_own_specs_stay_strict() {
        let text = r#"{"repositories": [{"url": "u", "path": "p", "name": "n"}]}"#;
        assert!(derrick(text).is_ok());
        let err = Spec::parse(text, Format::Json).unwrap_err();
        assert!(err.message.contains("unknown field `name`"), "{err}");
    }
}
