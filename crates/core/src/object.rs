//! Reading a struct from an object (a JSON object, a TOML table, a YAML
//! mapping) and nothing else.
//!
//! serde's derived `Deserialize` also reads a struct from a sequence of its
//! fields in order, so `"limits": [null, null]` would pass for limits. Used
//! as `deserialize_with` on struct-typed fields (and by the HTTP API on
//! whole bodies), these keep what is accepted what the documents say.

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// A `T` read from an object only.
pub fn from_object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_map(ObjectVisitor(PhantomData))
}

/// A `T` read from an object, or `None` from `null`.
pub fn from_optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<Object<T>>::deserialize(deserializer).map(|found| found.map(|object| object.0))
}

/// A list of `T`, each read from an object only.
pub fn from_objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ListVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of objects")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
            let objects = Vec::<Object<T>>::deserialize(SeqAccessDeserializer::new(seq))?;
            Ok(objects.into_iter().map(|object| object.0).collect())
        }
    }

    deserializer.deserialize_seq(ListVisitor(PhantomData))
}

/// A `T` that deserialises from an object only.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_object(deserializer).map(Object)
    }
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, PartialEq, Deserialize)]
    struct Pair {
        #[serde(default)]
        a: Option<u32>,
        #[serde(default)]
        b: Option<u32>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Holder {
        #[serde(default, deserialize_with = "from_object")]
        pair: Pair,
        #[serde(default, deserialize_with = "from_objects")]
        pairs: Vec<Pair>,
        #[serde(default, deserialize_with = "from_optional_object")]
        maybe: Option<Pair>,
    }

    #[test]
    fn a_struct_is_read_from_an_object_and_never_from_a_list() {
        let read: Holder =
            serde_json::from_str(r#"{"pair": {"a": 1}, "pairs": [{"b": 2}], "maybe": {"a": 3}}"#)
                .unwrap();
        assert_eq!(
            read.pair,
            Pair {
                a: Some(1),
                b: None
            }
        );
        assert_eq!(
            read.pairs,
            vec![Pair {
                a: None,
                b: Some(2)
            }]
        );
        assert_eq!(
            read.maybe,
            Some(Pair {
                a: Some(3),
                b: None
            })
        );
        let read: Holder = serde_json::from_str(r#"{"maybe": null}"#).unwrap();
        assert_eq!(read.maybe, None);

        for list in [
            r#"{"pair": [null, null]}"#,
            r#"{"pairs": [[1, 2]]}"#,
            r#"{"maybe": [1]}"#,
            r#"{"pairs": {"a": 1}}"#,
        ] {
            let err = serde_json::from_str::<Holder>(list).unwrap_err();
            assert!(err.to_string().contains("expected"), "{list}: {err}");
        }
        // What serde alone would accept.
        let quirk: Pair = serde_json::from_str("[null, null]").unwrap();
        assert_eq!(quirk, Pair::default());
    }
}
